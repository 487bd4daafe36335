import os

import numpy as np
import pytest
import soundfile as sf

from fdrl.data.manifest import Manifest
from fdrl.encoders.acoustic import LogMelEncoder, mean_std_pool
from fdrl.encoders.base import Encoded, Encoder
from fdrl.encoders.cache import cache_folder, cache_info, extract_features
from fdrl.encoders.precomputed import PrecomputedEncoder
from fdrl.errors import DataError

from .conftest import sine


class CountingText(Encoder):
    """A fake text encoder: pooled = [length, word count], sequence = one row per char."""

    modality, name = "text", "counting"

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.items, self.batches = 0, 0, []
        self.fail_on_call = fail_on_call

    @property
    def dim(self):
        return 2

    def encode(self, items, sequences=False):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C
        self.items += len(items)
        self.batches.append([len(t) for t in items])
        return [Encoded(pooled=np.array([len(t), len(t.split())], np.float32),
                        sequence=np.full((len(t) + 1, 2), len(t), np.float32) if sequences else None)
                for t in items]


def text_manifest(tmp_path, n=20):
    rows = [{"utt_id": f"u{i:02d}", "label": "a", "text": "word " * (i % 7) + f"x{i}"} for i in range(n)]
    return Manifest(rows, ["a"], tmp_path)


def test_miss_then_hit_is_a_no_op(tmp_path):
    m, enc = text_manifest(tmp_path), CountingText()
    first = extract_features(m, enc, tmp_path / "cache", batch_size=4, progress=False)
    assert (first.n_encoded, first.n_cached, enc.items) == (20, 0, 20)
    assert first.ids == [r["utt_id"] for r in m.rows] and first.pooled.shape == (20, 2)
    np.testing.assert_array_equal(first.pooled[:, 0], [len(r["text"]) for r in m.rows])
    again = CountingText()
    second = extract_features(m, again, tmp_path / "cache", batch_size=4, progress=False)
    assert again.calls == 0 and (second.n_encoded, second.n_cached) == (0, 20)
    np.testing.assert_array_equal(second.pooled, first.pooled)
    assert second.encoder == {"name": "counting"}
    assert cache_folder(tmp_path / "cache", enc).name.startswith("text-counting-")


def test_changed_text_is_re_encoded_alone(tmp_path):
    m = text_manifest(tmp_path)
    extract_features(m, CountingText(), tmp_path / "c", progress=False)
    m.rows[3]["text"] = "something else"
    enc = CountingText()
    table = extract_features(m, enc, tmp_path / "c", progress=False)
    assert enc.items == 1 and table.pooled[3, 0] == len("something else")


def test_sequences_missing_from_cache_are_re_encoded(tmp_path):
    m = text_manifest(tmp_path, n=6)
    extract_features(m, CountingText(), tmp_path / "c", progress=False)
    enc = CountingText()
    table = extract_features(m, enc, tmp_path / "c", sequences=True, progress=False)
    assert enc.items == 6
    assert [s.shape for s in table.sequences] == [(len(r["text"]) + 1, 2) for r in m.rows]
    assert all(s.dtype == np.float16 for s in table.sequences)
    for with_seq in (True, False):  # with and without sequences: both cached now
        enc = CountingText()
        extract_features(m, enc, tmp_path / "c", sequences=with_seq, progress=False)
        assert enc.calls == 0
    info = cache_info(tmp_path / "c")
    assert len(info) == 1 and info[0]["entries"] == 6 and info[0]["with_sequences"] == 6


def test_killed_run_resumes_from_the_last_shard(tmp_path):
    m = text_manifest(tmp_path, n=20)
    enc = CountingText(fail_on_call=4)
    with pytest.raises(KeyboardInterrupt):
        extract_features(m, enc, tmp_path / "c", batch_size=2, shard_size=4, progress=False)
    done = enc.items
    assert done == 6
    folder = cache_folder(tmp_path / "c", enc)
    assert len(list(folder.glob("shard-*.npz"))) == 2  # one flushed in the loop, one on the way out
    rest = CountingText()
    table = extract_features(m, rest, tmp_path / "c", batch_size=2, shard_size=4, progress=False)
    assert rest.items == 20 - done and table.n_cached == done
    np.testing.assert_array_equal(table.pooled[:, 0], [len(r["text"]) for r in m.rows])


def test_batches_are_length_sorted(tmp_path):
    m, enc = text_manifest(tmp_path), CountingText()
    extract_features(m, enc, tmp_path / "c", batch_size=4, progress=False)
    flat = [n for b in enc.batches for n in b]
    assert flat == sorted(flat, reverse=True)


def test_null_text_names_the_utterance(tmp_path):
    m = text_manifest(tmp_path, n=3)
    m.rows[1]["text"] = None
    enc = CountingText()
    with pytest.raises(DataError, match="'u01'.*null"):
        extract_features(m, enc, tmp_path / "c", progress=False)
    assert enc.calls == 0  # checked before any encoding


def test_audio_rows_keyed_by_file(tmp_path):
    rows = []
    for i in range(3):
        sf.write(tmp_path / f"w{i}.wav", sine(0.3 + 0.1 * i, seed=i), 16000)
        rows.append({"utt_id": f"w{i}", "label": "a", "audio": f"w{i}.wav", "text": None})
    m = Manifest(rows, ["a"], tmp_path)
    first = extract_features(m, LogMelEncoder(), tmp_path / "c", sequences=True, progress=False)
    assert first.pooled.shape == (3, 128) and first.sequences[2].shape == (1 + 8000 // 512, 64)
    # a rewritten file is re-encoded, the others are not
    sf.write(tmp_path / "w1.wav", sine(0.3, freq=440), 16000)
    st = os.stat(tmp_path / "w1.wav")
    os.utime(tmp_path / "w1.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = extract_features(m, LogMelEncoder(), tmp_path / "c", progress=False)
    assert (second.n_encoded, second.n_cached) == (1, 2)
    assert not np.allclose(second.pooled[1], first.pooled[1])
    m.rows[0]["audio"] = "missing.wav"
    with pytest.raises(DataError, match="'w0'.*not found"):
        extract_features(m, LogMelEncoder(), tmp_path / "c", progress=False)


def test_precomputed_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        np.save(tmp_path / f"f{i}.npy", rng.normal(size=(5 + i, 8)).astype(np.float32))
        rows.append({"utt_id": f"f{i}", "label": "a", "audio": None, "features": f"f{i}.npy"})
    m = Manifest(rows, ["a"], tmp_path)
    table = extract_features(m, PrecomputedEncoder(), tmp_path / "c", progress=False)
    np.testing.assert_allclose(table.pooled[2], mean_std_pool(np.load(tmp_path / "f2.npy")), rtol=1e-6)
    assert table.encoder["dim"] == 8
    assert extract_features(m, PrecomputedEncoder(dim=8), tmp_path / "c", progress=False).n_cached == 4
    with pytest.raises(DataError, match="no 'audio'.*--speech precomputed"):
        extract_features(m, LogMelEncoder(), tmp_path / "c", progress=False)


def test_corrupt_shard_is_set_aside_and_re_encoded_with_one_warning(tmp_path, caplog):
    m = text_manifest(tmp_path, n=8)
    enc = CountingText()
    first = extract_features(m, enc, tmp_path / "c", batch_size=2, shard_size=4, progress=False)
    folder = cache_folder(tmp_path / "c", enc)
    shards = sorted(folder.glob("shard-*.npz"))
    assert len(shards) == 2
    shards[0].write_bytes(shards[0].read_bytes()[:50])  # cut off (a bad disk, a copy stopped)
    caplog.set_level("WARNING", logger="fdrl.encoders.cache")
    again = CountingText()
    table = extract_features(m, again, tmp_path / "c", batch_size=2, shard_size=4, progress=False)
    assert again.items == 4 and table.n_cached == 4  # only the lost shard's utterances
    np.testing.assert_array_equal(table.pooled, first.pooled)
    warnings = [r for r in caplog.records if "unreadable cache shard" in r.getMessage()]
    assert len(warnings) == 1 and "moved to" in warnings[0].getMessage()
    assert not shards[0].exists() and (folder / (shards[0].name + ".corrupt")).is_file()
    caplog.clear()
    third = CountingText()
    extract_features(m, third, tmp_path / "c", batch_size=2, shard_size=4, progress=False)
    assert third.calls == 0  # repaired: nothing encoded, nothing warned
    assert not [r for r in caplog.records if "unreadable cache shard" in r.getMessage()]

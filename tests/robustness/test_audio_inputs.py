"""Audio files: unreadable ones stop ``fdrl cv`` with one line naming the file (or are
skipped with ``--skip-bad``); every readable format, rate and channel count works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from fdrl.cli import main
from fdrl.data.audio import load_audio
from tests.robustness import (audio_corpus, cv_args, error_line, fast_config, run_fdrl, tone,
                              write_wav)
from tests.robustness import one_torch_thread  # noqa: F401  (autouse fixture)


def _make_bad(path, kind: str):
    """Write one unusable sound file of ``kind``; return the words its error must contain."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tone(0.5)
    if kind == "corrupt":
        path.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(3000))
        return "unreadable or corrupt"
    if kind == "truncated":
        sf.write(str(path), x, 16000)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # a copy cut off half-way
        return "truncated audio file"
    if kind == "zero-bytes":
        path.write_bytes(b"")
        return "unreadable or corrupt"
    if kind == "no-samples":
        sf.write(str(path), np.zeros(0, np.float32), 16000)  # a valid header, no data
        return "no samples"
    if kind == "silent":
        sf.write(str(path), np.zeros_like(x), 16000)
        return "silent"
    if kind in ("nan", "inf"):
        x[100] = np.nan if kind == "nan" else np.inf
        sf.write(str(path), x, 16000, subtype="FLOAT")
        return "NaN/inf"
    raise ValueError(kind)


BAD_KINDS = ("corrupt", "truncated", "zero-bytes", "no-samples", "silent", "nan", "inf")


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_unreadable_audio_is_a_one_line_error_naming_file_and_row(tmp_path, capsys, kind):
    bad = tmp_path / "corpus" / "wav" / f"bad_{kind}.wav"
    words = _make_bad(bad, kind)
    corpus = audio_corpus(tmp_path / "corpus", extra=[{"utt_id": "bad", "audio": str(bad)}])
    assert main(cv_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert str(bad) in line and words in line, line
    assert "row 25 ('bad')" in line and "--skip-bad" in line, line
    assert not (tmp_path / "runs").exists()  # found before any run folder was made


def test_skip_bad_leaves_every_unusable_file_out_and_lists_it(tmp_path, capsys):
    extra = [{"utt_id": "gone", "audio": str(tmp_path / "corpus" / "wav" / "gone.wav")}]  # row 25
    for kind in BAD_KINDS:  # rows 26 ..
        path = tmp_path / "corpus" / "wav" / f"bad_{kind}.wav"
        _make_bad(path, kind)
        extra.append({"utt_id": f"bad_{kind}", "audio": str(path)})
    corpus = audio_corpus(tmp_path / "corpus", extra=extra)

    # without the flag: the missing file is named (it is found before any decoding)
    assert main(cv_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert "gone.wav" in line and "audio file not found" in line

    assert main(cv_args(tmp_path, corpus, "--skip-bad")) == 0
    out = capsys.readouterr().out
    assert "skipped 8 utterance(s)" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["n_utterances"] == 24 and meta["n_skipped"] == 8
    skipped = {s["utt_id"]: s["reason"] for s in meta["skipped"]}
    assert set(skipped) == {f"bad_{k}" for k in BAD_KINDS} | {"gone"}
    for kind in BAD_KINDS:
        assert f"bad_{kind}.wav" in skipped[f"bad_{kind}"]
    assert [s["row"] for s in meta["skipped"]] == list(range(25, 33))  # rows of the full manifest
    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_skipped"] == 8 and results["n_folds"] == 2
    assert sum(f["n_test"] for f in results["folds"]) == 16  # the skipped rows were in session 1
    assert main(["cv", "--resume", str(run_dir), "--quiet"]) == 0  # same rows skipped again


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_rate_and_channel_count_becomes_16k_mono(tmp_path, sr, channels):
    path = write_wav(tmp_path / "x.wav", seconds=0.5, sr=sr, channels=channels)
    wav = load_audio(path, 16000)
    assert wav.ndim == 1 and wav.dtype == np.float32
    assert abs(len(wav) - 8000) <= 1


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_formats_libsndfile_reads(tmp_path, fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile has no {fmt} support")
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(str(path), tone(0.5), 16000, format=fmt)
    wav = load_audio(path, 16000)
    assert abs(len(wav) - 8000) < 1200  # MP3 pads a frame or two
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0.1


def test_mixed_corpus_of_rates_formats_and_long_files_trains(tmp_path, capsys):
    wav_dir = tmp_path / "corpus" / "wav"
    extra = []
    for sr in (8000, 22050, 44100, 48000):
        extra.append({"utt_id": f"sr{sr}", "audio": str(write_wav(wav_dir / f"sr{sr}.wav", sr=sr, channels=2))})
    for fmt in ("FLAC", "MP3"):
        path = wav_dir / f"x.{fmt.lower()}"
        sf.write(str(path), tone(0.4), 16000, format=fmt)
        extra.append({"utt_id": f"fmt_{fmt}", "audio": str(path)})
    long = write_wav(wav_dir / "long.wav", seconds=6.0)  # longer than data.max_seconds=2
    extra.append({"utt_id": "long", "audio": str(long)})
    corpus = audio_corpus(tmp_path / "corpus", extra=extra)
    assert len(load_audio(long, 16000, max_seconds=2.0)) == 32000  # the first 2 s are kept
    assert main(cv_args(tmp_path, corpus, "data.max_seconds=2")) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["n_utterances"] == 24 + len(extra) and meta["skipped"] == []


@pytest.mark.slow
def test_unreadable_file_through_a_real_subprocess_prints_no_traceback(tmp_path):
    bad = tmp_path / "corpus" / "wav" / "bad.wav"
    _make_bad(bad, "truncated")
    corpus = audio_corpus(tmp_path / "corpus", extra=[{"utt_id": "bad", "audio": str(bad)}])
    proc = run_fdrl("cv", "--config", str(fast_config(tmp_path)), "--quiet", f"data.manifest={corpus}",
                    f"features.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path / 'runs'}")
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert str(bad) in line and "truncated" in line
    assert not (tmp_path / "runs").exists()

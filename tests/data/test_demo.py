"""The generated demo corpus: determinism, layout, valid audio, idempotency, and that
emotion is really present in both the audio and the text."""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from fdrl.data.demo import CLASSES, generate_demo, make_sentence, plan_row
from fdrl.data.manifest import read_manifest
from fdrl.errors import ConfigError

N_SMALL = 130  # 13 per speaker: one full label block, so every class for every speaker


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0, n_utterances=N_SMALL)
    return read_manifest(out)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    generate_demo(tmp_path / "a", seed=3, n_utterances=20)
    generate_demo(tmp_path / "b", seed=3, n_utterances=20)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 22  # 20 wavs + manifest.jsonl + labels.json
    assert a == b


def test_other_seed_differs_and_prefix_is_order_independent(tmp_path):
    generate_demo(tmp_path / "s3", seed=3, n_utterances=20)
    generate_demo(tmp_path / "s4", seed=4, n_utterances=20)
    generate_demo(tmp_path / "s3_long", seed=3, n_utterances=30)
    a, b, long = (_files(tmp_path / d) for d in ("s3", "s4", "s3_long"))
    assert a["audio/s1_F_0001.wav"] != b["audio/s1_F_0001.wav"]
    # utterance i depends on (seed, i) only: a larger corpus starts with the same 20
    for name, data in a.items():
        if name.endswith(".wav"):
            assert long[name] == data, name


def test_counts_per_session_speaker_and_class(corpus):
    rows = corpus.rows
    assert len(rows) == N_SMALL
    assert corpus.classes == CLASSES
    assert Counter(r["session"] for r in rows) == {s: N_SMALL // 5 for s in range(1, 6)}
    speakers = Counter(r["speaker"] for r in rows)
    assert len(speakers) == 10 and set(speakers.values()) == {N_SMALL // 10}
    for s in range(1, 6):
        genders = {r["gender"] for r in rows if r["session"] == s}
        assert genders == {"F", "M"}, f"session {s}"
    for spk in speakers:  # every speaker says every class
        assert {r["label"] for r in rows if r["speaker"] == spk} == set(CLASSES), spk
    # one shuffled block per speaker: neutral a bit more frequent, the rest balanced
    assert Counter(r["label"] for r in rows) == {"angry": 30, "happy": 30, "neutral": 40,
                                                  "sad": 30}
    assert len({r["utt_id"] for r in rows}) == N_SMALL
    assert all(r["corpus"] == "demo" and isinstance(r["session"], int) for r in rows)
    assert all(r["audio"] == f"audio/{r['utt_id']}.wav" for r in rows)


def test_audio_valid_and_durations_match(corpus):
    for r in corpus.rows:
        path = corpus.resolve(r["audio"])
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path
        assert 1.0 <= r["duration"] <= 3.0, r["utt_id"]
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3, r["utt_id"]
    for r in corpus.rows[::10]:
        wave, _ = sf.read(corpus.resolve(r["audio"]))
        assert np.isfinite(wave).all()
        assert np.sqrt(np.mean(wave ** 2)) > 3e-3, f"{r['utt_id']} is (nearly) silent"
        assert r["text"] and r["text"][-1] in ".!"


def test_idempotent_and_regenerates_on_change(tmp_path, caplog):
    out = tmp_path / "demo"
    path = generate_demo(out, seed=1, n_utterances=20)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    time.sleep(0.01)
    with caplog.at_level(logging.INFO, logger="fdrl.data.demo"):
        assert generate_demo(out, seed=1, n_utterances=20) == path
    assert "up to date" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

    (out / "audio" / "s2_M_0001.wav").unlink()  # a missing wav is not up to date
    generate_demo(out, seed=1, n_utterances=20)
    assert (out / "audio" / "s2_M_0001.wav").is_file()

    generate_demo(out, seed=1, n_utterances=10)  # other params: regenerated, no stale wavs
    assert len(read_manifest(out)) == 10
    assert len(list((out / "audio").glob("*.wav"))) == 10


def test_rejects_too_few_utterances(tmp_path):
    with pytest.raises(ConfigError, match="n_utterances"):
        generate_demo(tmp_path, n_utterances=5)


def _rms_db(wave):
    return 20 * np.log10(np.sqrt(np.mean(wave ** 2)) + 1e-9)


def _median_f0_st(wave, sr, frame=1024, hop=512):
    """Median f0 (semitones re 100 Hz) over the loud frames, by autocorrelation peak."""
    starts = np.arange(0, len(wave) - frame, hop)
    frames = np.stack([wave[s:s + frame] for s in starts])  # (T, frame)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))  # (T,)
    frames = frames[rms > 0.3 * rms.max()] * np.hanning(frame)
    spec = np.fft.rfft(frames, n=2 * frame)  # zero-padded: linear, not circular
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :frame]  # (T', frame)
    lo, hi = sr // 500, sr // 60  # lags of 500 Hz .. 60 Hz
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)  # (T',)
    return float(np.median(12 * np.log2(sr / lag / 100.0)))


def test_emotion_is_in_the_audio(corpus):
    loudness = {c: [] for c in CLASSES}
    f0_gap = []  # per speaker: mean f0 (semitones) of angry minus sad
    for spk in sorted({r["speaker"] for r in corpus.rows}):
        f0 = {"angry": [], "sad": []}
        for r in corpus.rows:
            if r["speaker"] != spk:
                continue
            wave, sr = sf.read(corpus.resolve(r["audio"]))
            loudness[r["label"]].append(_rms_db(wave))
            if r["label"] in f0:
                f0[r["label"]].append(_median_f0_st(wave, sr))
        f0_gap.append(np.mean(f0["angry"]) - np.mean(f0["sad"]))
    mean = {c: np.mean(v) for c, v in loudness.items()}
    # high arousal is louder than low arousal, by several dB on average
    assert min(mean["angry"], mean["happy"]) > max(mean["neutral"], mean["sad"]) + 3, mean
    assert np.mean(f0_gap) > 2.0, f0_gap  # angry is higher-pitched than sad (semitones)
    assert sum(g > 0 for g in f0_gap) >= 7, f0_gap  # ... for most speakers (3 takes each)


def test_emotion_is_in_the_text(corpus):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    # the rows of an 800-utterance corpus, without synthesising its audio
    rows = [plan_row(0, i) for i in range(800)]
    planned = sorted((r["utt_id"], r["label"], r["text"]) for r in rows[:N_SMALL])
    written = sorted((r["utt_id"], r["label"], r["text"]) for r in corpus.rows)
    assert planned == written, "plan_row differs from the generated corpus"
    train = [r for r in rows if r["session"] <= 3]
    test = [r for r in rows if r["session"] > 3]  # unseen sessions
    vec = CountVectorizer(binary=True)
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform([r["text"] for r in train]),
                                                [r["label"] for r in train])
    pred = clf.predict(vec.transform([r["text"] for r in test]))
    truth = np.array([r["label"] for r in test])
    majority = max(Counter(truth).values()) / len(truth)
    acc = np.mean(pred == truth)
    assert acc > majority + 0.15, (acc, majority)


def test_text_is_ambiguous_by_design():
    # many draws of the sentence model alone (no audio): some emotional sentences are
    # neutral-worded, and angry and sad share negative phrases
    rng = np.random.default_rng(0)
    angry = [make_sentence("angry", rng) for _ in range(400)]
    sad = [make_sentence("sad", rng) for _ in range(400)]
    neutral = {make_sentence("neutral", rng).rstrip(".!") for _ in range(400)}
    plain = sum(s.rstrip(".!") in neutral for s in angry)
    assert plain > 10, plain
    shared = {s.split(",")[0] for s in angry} & {s.split(",")[0] for s in sad}
    assert any("terrible" in s or "hate" in s for s in shared), shared


@pytest.mark.slow
def test_full_corpus_is_fast_and_complete(tmp_path):
    start = time.process_time()  # CPU time: wall time depends on what else runs
    m = read_manifest(generate_demo(tmp_path, seed=0))
    cpu = time.process_time() - start
    assert len(m) == 800
    counts = Counter(r["label"] for r in m.rows)
    assert counts["neutral"] == max(counts.values()) and min(counts.values()) >= 150, counts
    assert Counter(r["speaker"] for r in m.rows).most_common()[-1][1] == 80
    assert cpu < 30, f"generation took {cpu:.1f} s of CPU time (budget: 30 s)"

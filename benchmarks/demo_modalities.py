"""How much each modality of the demo corpus says about emotion: a classical baseline.

Generates (or reuses) the demo corpus, then runs leave-one-session-out (5 folds)
logistic regression on

* speech: a handful of acoustic statistics per utterance (f0 from YIN, RMS, onset
  rate, spectral centroid, zero-crossing rate, voiced fraction), or eGeMAPSv02
  functionals with ``--speech egemaps``;
* text: TF-IDF over word unigrams and bigrams;
* both: the two blocks side by side;

and prints WAR (accuracy) and UAR (balanced accuracy) pooled over the 5 test
sessions, plus the per-fold mean.

Usage::

    PYTHONPATH=src python benchmarks/demo_modalities.py --out /tmp/fdrl_demo
"""

from __future__ import annotations

import argparse
import time

import librosa
import numpy as np
import soundfile as sf
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from fdrl.data.demo import generate_demo
from fdrl.data.manifest import read_manifest

SPEECH_NAMES = ["f0_mean_st", "f0_std_st", "f0_p10_st", "f0_p90_st", "rms_mean_db",
                "rms_std_db", "rms_p90_db", "onset_rate", "centroid_mean", "centroid_std",
                "zcr_mean", "voiced_frac", "duration"]


def simple_features(wave: np.ndarray, sr: int) -> np.ndarray:
    """A handful of acoustic statistics of one utterance.

    Parameters
    ----------
    wave : (N,) float waveform
    sr : sample rate, Hz

    Returns
    -------
    (13,) features, named by :data:`SPEECH_NAMES`
    """
    hop, frame = 256, 1024
    rms = librosa.feature.rms(y=wave, frame_length=frame, hop_length=hop)[0]  # (T,)
    rms_db = 20 * np.log10(rms + 1e-6)  # (T,)
    # "voiced" = within 25 dB of the loudest frame: pitch and timbre stats use those only
    active = rms_db > rms_db.max() - 25  # (T,)
    f0 = librosa.yin(wave, fmin=60, fmax=500, sr=sr, frame_length=frame, hop_length=hop)
    f0_st = 12 * np.log2(f0[: len(active)][active] / 100.0)  # semitones re 100 Hz
    centroid = librosa.feature.spectral_centroid(y=wave, sr=sr, n_fft=frame, hop_length=hop)[0]
    zcr = librosa.feature.zero_crossing_rate(wave, frame_length=frame, hop_length=hop)[0]
    onsets = librosa.onset.onset_detect(y=wave, sr=sr, hop_length=hop, units="time")
    dur = len(wave) / sr
    return np.array([
        f0_st.mean(), f0_st.std(), np.percentile(f0_st, 10), np.percentile(f0_st, 90),
        rms_db[active].mean(), rms_db.std(), np.percentile(rms_db, 90),
        len(onsets) / dur,
        centroid[active].mean(), centroid[active].std(),
        zcr[active].mean(), active.mean(), dur,
    ])


def speech_matrix(manifest, kind: str) -> np.ndarray:
    """(U, F) speech features for every row of ``manifest``."""
    if kind == "egemaps":
        import opensmile

        smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                feature_level=opensmile.FeatureLevel.Functionals)
        feats = [smile.process_file(str(manifest.resolve(r["audio"]))).to_numpy()[0]
                 for r in tqdm(manifest.rows, desc="eGeMAPS", disable=None)]
        return np.stack(feats)
    feats = []
    for r in tqdm(manifest.rows, desc="features", disable=None):
        wave, sr = sf.read(manifest.resolve(r["audio"]), dtype="float32")
        feats.append(simple_features(wave, sr))
    return np.stack(feats)  # (U, 13)


def loso(x_speech, texts, y, sessions, modality: str, c: float, text_weight: float):
    """Leave-one-session-out predictions for one modality ('speech', 'text', 'both').

    Returns
    -------
    pred : (U,) predicted class index for every utterance (each from the fold where it
        was test)
    fold_uar : (S,) UAR of each test session
    """
    pred = np.empty_like(y)
    fold_uar = []
    for s in np.unique(sessions):
        tr, te = sessions != s, sessions == s
        blocks_tr, blocks_te = [], []
        if modality in ("speech", "both"):
            scaler = StandardScaler().fit(x_speech[tr])
            blocks_tr.append(csr_matrix(scaler.transform(x_speech[tr])))
            blocks_te.append(csr_matrix(scaler.transform(x_speech[te])))
        if modality in ("text", "both"):
            # fit on the training sessions only: the vocabulary must not see the test fold
            vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
            tr_txt = vec.fit_transform([texts[i] for i in np.flatnonzero(tr)])
            te_txt = vec.transform([texts[i] for i in np.flatnonzero(te)])
            # TF-IDF rows have unit L2 norm, so each of a sentence's ~10 terms is ~0.3:
            # the weight puts a word on par with a standardised acoustic statistic
            # (standardising the words instead blows up rare ones)
            blocks_tr.append(tr_txt * text_weight)
            blocks_te.append(te_txt * text_weight)
        clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
        clf.fit(hstack(blocks_tr).tocsr(), y[tr])
        pred[te] = clf.predict(hstack(blocks_te).tocsr())
        fold_uar.append(balanced_accuracy_score(y[te], pred[te]))
    return pred, np.array(fold_uar)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/fdrl_demo", help="corpus folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=800, help="number of utterances")
    parser.add_argument("--speech", choices=["simple", "egemaps"], default="simple")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength")
    parser.add_argument("--text-weight", type=float, default=3.0,
                        help="scale of the TF-IDF block relative to standardised speech")
    parser.add_argument("--confusion", action="store_true", help="print confusion matrices")
    args = parser.parse_args()

    t0 = time.perf_counter()
    generate_demo(args.out, seed=args.seed, n_utterances=args.n)
    print(f"corpus: {args.out} ({time.perf_counter() - t0:.1f} s)")
    m = read_manifest(args.out)
    y = np.array(m.labels())
    sessions = np.array([r["session"] for r in m.rows])
    texts = [r["text"] for r in m.rows]
    x_speech = speech_matrix(m, args.speech)

    print(f"{len(m)} utterances, classes {m.classes}, speech features: {args.speech} "
          f"({x_speech.shape[1]}), LOSO over {len(np.unique(sessions))} sessions, "
          f"C={args.C}, text weight={args.text_weight}")
    print(f"{'modality':<8} {'WAR':>6} {'UAR':>6}  {'UAR per fold (mean +- std)':>28}")
    for modality in ("speech", "text", "both"):
        pred, fold_uar = loso(x_speech, texts, y, sessions, modality, args.C,
                              args.text_weight)
        war, uar = accuracy_score(y, pred), balanced_accuracy_score(y, pred)
        print(f"{modality:<8} {100 * war:6.1f} {100 * uar:6.1f}  "
              f"{100 * fold_uar.mean():20.1f} +- {100 * fold_uar.std():4.1f}")
        if args.confusion:
            print(confusion_matrix(y, pred))


if __name__ == "__main__":
    main()

"""Feature extraction speed: the toolkit path against a plain loop, in one run.

* text: all-MiniLM-L6-v2 on the IEMOCAP transcripts (5514, ``../shared/data/iemocap4_text``).
  Toolkit: ``extract_features`` with ``HFTextEncoder("minilm")`` (length-sorted
  batches, writing a fresh empty cache in a temp folder). Plain: tokenizer + AutoModel
  in manifest order, batches of the same size padded to their longest, masked mean.
* speech: eGeMAPSv02 LLDs (the speech default) on the EmoDB wavs (535,
  ``../shared/data/emodb``). Toolkit: ``extract_features`` with ``EgemapsEncoder``
  (files read on threads, openSMILE on a thread pool, cache written). Plain: one file at
  a time: soundfile read, soxr to 16 kHz, clip to full scale, ``Smile.process_signal``,
  mean and std.

Both paths compute the same numbers (the largest difference is printed); the model
loading is not timed. Prints utterances/s of each path, their ratio and the machine.

Usage::

    PYTHONPATH=src python benchmarks/encode.py [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fdrl.data.manifest import Manifest
from fdrl.encoders.cache import extract_features
from fdrl.utils.system import machine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"




def toolkit(rows: list[dict], root: Path, encoder, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds and pooled vectors of extract_features into a fresh cache."""
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        table = extract_features(Manifest(rows, ["x"], root), encoder, cache, batch_size=batch_size,
                                 progress=False)
        seconds = time.perf_counter() - t0
    assert table.n_encoded == len(rows)
    return seconds, table.pooled


def bench_text(limit: int | None, batch_size: int) -> dict:
    from transformers import AutoModel, AutoTokenizer

    from fdrl.encoders.registry import resolve_hf_model
    from fdrl.encoders.text import HFTextEncoder

    path = DATA / "iemocap4_text" / "iemocap4.jsonl"
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()][:limit]
    for r in rows:
        r["label"] = "x"
    texts = [r["text"] for r in rows]

    # plain transformers, manifest order
    load_from, _ = resolve_hf_model("minilm")
    tok, model = AutoTokenizer.from_pretrained(load_from), AutoModel.from_pretrained(load_from).eval()

    def plain(texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                b = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                        return_tensors="pt")
                h = model(**b).last_hidden_state  # (B, L, d)
                m = b["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
                out.append(((h * m).sum(1) / m.sum(1)).numpy())
        return np.concatenate(out)

    encoder = HFTextEncoder("minilm", batch_size=batch_size)
    encoder.encode(texts[:batch_size])  # warm-up both paths (first-call allocations)
    plain(texts[:batch_size])
    t0 = time.perf_counter()
    ref = plain(texts)
    t_plain = time.perf_counter() - t0
    t_tool, pooled = toolkit(rows, path.parent, encoder, batch_size)
    return {"what": "text minilm (IEMOCAP transcripts)", "n": len(rows), "batch_size": batch_size,
            "toolkit_s": t_tool, "plain_s": t_plain, "max_abs_diff": float(np.abs(pooled - ref).max())}


def bench_speech(limit: int | None, batch_size: int) -> dict:
    import csv

    import opensmile
    import soundfile as sf
    import soxr

    from fdrl.encoders.acoustic import EgemapsEncoder

    root = DATA / "emodb"
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        files = [r["file"] for r in csv.DictReader(fh)][:limit]
    rows = [{"utt_id": Path(f).stem, "label": "x", "audio": f, "text": None} for f in files]

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.LowLevelDescriptors)

    def plain() -> np.ndarray:
        out = []
        for f in files:
            wav, sr = sf.read(root / f, dtype="float32", always_2d=True)
            wav = soxr.resample(wav.mean(axis=1), sr, 16000)
            # as the toolkit does: resampled peaks above full scale would wrap around in
            # openSMILE's int16 conversion (a few EmoDB files have them)
            wav = np.clip(wav, -1.0, 32767 / 32768)
            lld = smile.process_signal(wav, 16000).to_numpy()  # (frames, 25)
            out.append(np.concatenate([lld.mean(0), lld.std(0)]))
        return np.stack(out)

    t0 = time.perf_counter()
    ref = plain()
    t_plain = time.perf_counter() - t0
    t_tool, pooled = toolkit(rows, root, EgemapsEncoder(), batch_size)
    return {"what": "speech egemaps (EmoDB wavs)", "n": len(rows), "batch_size": batch_size,
            "toolkit_s": t_tool, "plain_s": t_plain,
            "max_abs_diff": float(np.abs(pooled - ref).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N utterances of each corpus")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--text-batch-size", type=int, default=32)
    parser.add_argument("--speech-batch-size", type=int, default=16)
    parser.add_argument("--only", choices=("text", "speech"), default=None)
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: shared data folder not found")

    results = []
    if args.only in (None, "text"):
        results.append(bench_text(args.limit, args.text_batch_size))
    if args.only in (None, "speech"):
        results.append(bench_speech(args.limit, args.speech_batch_size))
    for r in results:
        r["toolkit_utt_s"] = r["n"] / r["toolkit_s"]
        r["plain_utt_s"] = r["n"] / r["plain_s"]
        r["ratio"] = r["toolkit_utt_s"] / r["plain_utt_s"]
    info = machine()

    print(f"{'what':<36} {'N':>5} {'toolkit utt/s':>14} {'plain utt/s':>12} {'ratio':>6} "
          f"{'max |diff|':>11}")
    for r in results:
        print(f"{r['what']:<36} {r['n']:>5} {r['toolkit_utt_s']:>14.1f} {r['plain_utt_s']:>12.1f} "
              f"{r['ratio']:>6.2f} {r['max_abs_diff']:>11.2e}")
    print(f"machine: {info['cores']} cores, {info['cpu']}; torch {info['torch']} "
          f"({info['torch_threads']} threads), Python {info['python']}; "
          f"load average {info['load_average_1min']} at the end")
    if args.json:
        from fdrl.utils.io import write_json

        write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()

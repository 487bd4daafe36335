"""Prediction latency and throughput of a model bundle on CPU.

Measures, with a bundle of the offline encoders (speech eGeMAPS or log-mel, text
all-MiniLM-L6-v2):

* latency of ``Predictor.predict(audio=<5 s wav file>, text=<one sentence>)``: p50,
  p95 and mean over ``--calls`` calls after ``--warmup`` calls (target: p50 <= 150 ms);
* where one call spends its time: reading the file, the speech encoder, the text
  encoder, the model (each timed alone, median of the same number of calls);
* batch throughput: utterances/s of ``predict_batch`` over ``--batch-items`` demo
  utterances (1-3 s each, with their transcripts), ``--batch-size`` per call.

Without ``--model`` a demo bundle is trained first (``fdrl train`` on a generated
demo corpus, a few epochs; its accuracy does not matter here). Model loading is not
timed. Prints what was measured, on what, and the machine (cores, CPU model, load).

Usage::

    PYTHONPATH=src python benchmarks/predict_latency.py [--speech egemaps|logmel]
        [--model BUNDLE] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from fdrl.utils.system import machine

SENTENCE = "I can't believe they moved the meeting again, this is ridiculous!"




def train_demo_bundle(work: Path, speech: str) -> Path:
    """Generate a demo corpus and train a small FDRL bundle on it with ``fdrl train``."""
    from fdrl.cli import main
    from fdrl.data.demo import generate_demo

    corpus = work / "demo"
    generate_demo(corpus, n_utterances=100)
    cfg = {"data": {"manifest": str(corpus)},
           "features": {"speech": {"name": speech}, "text": {"name": "minilm"},
                        "cache_dir": str(work / "cache")},
           "model": {"name": "fdrl"},
           "train": {"epochs": 3, "patience": 0},
           "run": {"name": f"bench-{speech}", "tensorboard": False}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = work / "bundle"
    if main(["train", "--config", str(work / "config.yaml"), "--out", str(out), "--quiet"]) != 0:
        raise SystemExit("training the demo bundle failed")
    return out


def five_second_wav(path: Path) -> Path:
    """A 5 s synthetic utterance of the demo generator (16 kHz, 16-bit PCM)."""
    from fdrl.data.demo import make_speaker, synthesize

    rng = np.random.default_rng([0, 5])
    channel = (0.0, 10 ** (-48 / 20))  # session gain (dB), noise floor (RMS)
    wave = synthesize(make_speaker(0, 3), "angry", 5.0, rng, 16000, channel)
    sf.write(path, (np.round(wave * 32767)).astype(np.int16), 16000, subtype="PCM_16")
    return path


def timed(fn, calls: int, warmup: int, cpu: list[float] | None = None) -> list[float]:
    """Wall milliseconds of ``calls`` calls of ``fn()`` after ``warmup`` untimed calls.

    ``cpu`` receives each call's process CPU milliseconds (all threads): on a shared
    machine the wall time includes waiting for a core, the CPU time does not.
    """
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
        if cpu is not None:
            cpu.append(1000 * (time.process_time() - c0))
    return out


def stats(ms: list[float], cpu: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "mean_ms": round(statistics.fmean(ms), 1), "calls": len(ms),
            "cpu_p50_ms": round(statistics.median(cpu), 1)}


def breakdown(p, wav: Path, calls: int, warmup: int) -> dict:
    """Median ms of each stage of one call, each stage timed on its own."""
    from fdrl.data.audio import load_audio
    from fdrl.models.base import Inputs

    wave = load_audio(wav, 16000, p.max_seconds, p.min_samples)
    speech = p.speech_encoder.encode([wave])[0].pooled
    text = p.text_encoder.encode([SENTENCE])[0].pooled
    inputs = Inputs(torch.from_numpy(speech[None]), None, torch.from_numpy(text[None]), None)

    def model():
        with torch.inference_mode():
            p.model(inputs)

    stages = {
        "read_audio": lambda: load_audio(wav, 16000, p.max_seconds, p.min_samples),
        "speech_encoder": lambda: p.speech_encoder.encode([wave]),
        "text_encoder": lambda: p.text_encoder.encode([SENTENCE]),
        "model": model,
    }
    return {k: round(statistics.median(timed(fn, calls, warmup)), 1) for k, fn in stages.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a bundle folder (default: train a demo bundle first)")
    ap.add_argument("--speech", default="egemaps", choices=["egemaps", "logmel"],
                    help="speech encoder of the demo bundle (without --model)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--batch-items", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import fdrl
    from fdrl.data.demo import generate_demo
    from fdrl.data.manifest import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = Path(args.model) if args.model else train_demo_bundle(work, args.speech)
        t0 = time.perf_counter()
        p = fdrl.load(bundle)
        load_s = time.perf_counter() - t0
        wav = five_second_wav(work / "five_seconds.wav")

        cpu: list[float] = []
        latency = stats(timed(lambda: p.predict(audio=str(wav), text=SENTENCE),
                              args.calls, args.warmup, cpu), cpu)
        stages = breakdown(p, wav, args.calls, args.warmup)

        corpus = work / "batch_demo"
        m = read_manifest(generate_demo(corpus, seed=1, n_utterances=max(10, args.batch_items)))
        items = [{"utt_id": r["utt_id"], "audio": str(m.resolve(r["audio"])), "text": r["text"]}
                 for r in m.rows[: args.batch_items]]
        p.predict_batch(items[: args.batch_size], batch_size=args.batch_size, progress=False)
        t0 = time.perf_counter()
        p.predict_batch(items, batch_size=args.batch_size, progress=False)
        batch_s = time.perf_counter() - t0
        seconds_audio = sum(r["duration"] for r in m.rows[: args.batch_items])

    encoders = p.bundle.encoders
    result = {
        "bundle": str(bundle) if args.model else f"demo bundle trained here ({args.speech} + minilm)",
        "encoders": {"speech": (encoders.get("speech") or {}).get("name"),
                     "text": (encoders.get("text") or {}).get("name")},
        "model": p.bundle.model_name,
        "load_seconds": round(load_s, 2),
        "single": {"input": "one 5 s wav file (16 kHz) + one sentence", **latency,
                   "warmup": args.warmup, "target_p50_ms": 150,
                   "meets_target": latency["p50_ms"] <= 150},
        "stages_median_ms": stages,
        "batch": {"items": len(items), "batch_size": args.batch_size,
                  "audio_seconds": round(seconds_audio, 1), "seconds": round(batch_s, 2),
                  "utterances_per_s": round(len(items) / batch_s, 1)},
        "machine": machine(),
    }
    s, b = result["single"], result["batch"]
    print(f"bundle: {result['bundle']} (model {result['model']}, speech {result['encoders']['speech']}, "
          f"text {result['encoders']['text']}); loaded in {result['load_seconds']} s")
    print(f"single call, {s['input']}: p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, "
          f"mean {s['mean_ms']} ms over {s['calls']} calls after {s['warmup']} warm-up "
          f"(target p50 <= 150 ms: {'met' if s['meets_target'] else 'MISSED'}); "
          f"CPU time per call p50 {s['cpu_p50_ms']} ms")
    print("  stages (median ms): " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print(f"batch: {b['items']} demo utterances ({b['audio_seconds']} s of audio), batch size "
          f"{b['batch_size']}: {b['seconds']} s = {b['utterances_per_s']} utterances/s")
    mach = result["machine"]
    print(f"machine: {mach['cores']} cores, {mach['cpu']}, torch {mach['torch']} with "
          f"{mach['torch_threads']} threads, load average {mach['load_average_1min']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

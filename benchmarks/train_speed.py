"""Training speed of the FDRL head on cached features, and the toolkit's trainer against
a plain PyTorch loop; optionally the wall time of ``fdrl demo``.

* classes: training steps/s of FDRL (the ``demo`` config's model: d 64, hidden 128) on
  random pooled features shaped like the demo's cached ones (speech 50-d eGeMAPS
  mean+std, text 384-d MiniLM), batch 32, for C = 4 and C = 16 emotion classes. FDRL
  has one local subdomain discriminator per class, so C matters; target: a C = 16 step
  costs at most 1.5x a C = 4 step. The two are timed alternately, block by block, and
  the ratio is taken block by block (median over ``--repeats``).
* trainer: ``Trainer.fit`` (validation every epoch, best-weights copy, early-stopping
  bookkeeping) against a bare loop doing the same steps and the same validation
  forward passes, same model and data; ratio trainer / plain, pair by pair.
* demo (``--demo``): wall time of ``fdrl demo`` in a fresh temporary folder (generate
  the corpus, extract the features, 5-fold CV) as a child process, and its peak RSS.

Model construction and warm-up steps are not timed. Prints the figures and the machine.

Usage::

    PYTHONPATH=src python benchmarks/train_speed.py [--repeats 5] [--steps 50]
        [--trainer-epochs 3] [--demo [--demo-overrides train.epochs=5]] [--json OUT]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fdrl.utils.system import machine

REPO = Path(__file__).resolve().parents[1]
SPEECH_DIM, TEXT_DIM, N_SPEAKERS = 50, 384, 10




def build_fdrl(num_classes: int, overrides: list[str]):
    """FDRL as the demo config builds it, for pooled speech/text inputs and C classes."""
    from fdrl.checkpoint import build_model
    from fdrl.config import load_config
    from fdrl.models.base import InputSpec

    cfg = load_config("demo", ["data.manifest=unused", *overrides])
    spec = InputSpec(num_classes=num_classes, speech_dim=SPEECH_DIM, text_dim=TEXT_DIM,
                     num_speakers=N_SPEAKERS)
    return cfg, build_model(cfg, spec)


def random_batches(n: int, batch_size: int, num_classes: int, seed: int) -> list:
    """``n`` batches of random features: (B, 50) speech, (B, 384) text, labels, speakers."""
    from fdrl.models.base import Inputs

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        inputs = Inputs(speech=torch.randn(batch_size, SPEECH_DIM, generator=g),  # (B, 50)
                        text=torch.randn(batch_size, TEXT_DIM, generator=g))      # (B, 384)
        labels = torch.randint(0, num_classes, (batch_size,), generator=g)         # (B,)
        speakers = torch.randint(0, N_SPEAKERS, (batch_size,), generator=g)        # (B,)
        out.append((inputs, labels, speakers))
    return out


class Stepper:
    """One model + optimiser; ``run(k)`` takes k training steps (as the trainer does)."""

    def __init__(self, num_classes: int, batch_size: int, overrides: list[str], seed: int = 0):
        torch.manual_seed(seed)
        cfg, self.model = build_fdrl(num_classes, overrides)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr,
                                     weight_decay=cfg.train.weight_decay)
        self.grad_clip = cfg.train.grad_clip
        self.batches = random_batches(16, batch_size, num_classes, seed)
        self.i = 0

    def run(self, k: int) -> float:
        """Seconds for ``k`` steps."""
        t0 = time.perf_counter()
        for _ in range(k):
            inputs, labels, speakers = self.batches[self.i % len(self.batches)]
            self.i += 1
            self.model.set_progress(min(1.0, self.i / 1000))
            out = self.model(inputs, labels=labels, speakers=speakers)
            self.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.opt.step()
        return time.perf_counter() - t0


def bench_classes(classes: list[int], batch_size: int, steps: int, repeats: int, warmup: int,
                  overrides: list[str]) -> dict:
    """Per-step seconds of each C, timed in alternating blocks; ratios block by block."""
    steppers = {c: Stepper(c, batch_size, overrides) for c in classes}
    for s in steppers.values():
        s.run(warmup)
    per_step = {c: [] for c in classes}
    for _ in range(repeats):
        for c in classes:
            per_step[c].append(steppers[c].run(steps) / steps)
    base = classes[0]
    out = {"batch_size": batch_size, "steps_per_block": steps, "repeats": repeats,
           "warmup_steps": warmup, "per_class": {}}
    for c in classes:
        med = statistics.median(per_step[c])
        out["per_class"][str(c)] = {"step_ms_median": 1000 * med, "steps_per_s": 1 / med,
                                    "step_ms_all": [1000 * t for t in per_step[c]],
                                    "n_params": sum(p.numel() for p in steppers[c].model.parameters())}
        if c != base:
            ratios = [t / b for t, b in zip(per_step[c], per_step[base])]
            out["per_class"][str(c)]["ratio_vs_base"] = statistics.median(ratios)
            out["per_class"][str(c)]["ratios"] = ratios
    return out


# ----------------------------------------------------------------------------------
# The trainer against a plain loop


def random_data(n: int, num_classes: int, seed: int):
    """FeatureData of ``n`` random utterances (pooled speech 50-d, text 384-d)."""
    from fdrl.data.manifest import Manifest
    from fdrl.training.data import FeatureData, ModalityArrays

    rng = np.random.default_rng(seed)
    classes = [f"c{k}" for k in range(num_classes)]
    labels = rng.integers(0, num_classes, n)  # (N,)
    speakers = rng.integers(0, N_SPEAKERS, n)  # (N,)
    rows = [{"utt_id": f"u{i}", "label": classes[labels[i]], "speaker": f"s{speakers[i]}"}
            for i in range(n)]
    speech = rng.normal(size=(n, SPEECH_DIM)).astype(np.float32)  # (N, 50)
    text = rng.normal(size=(n, TEXT_DIM)).astype(np.float32)  # (N, 384)
    return FeatureData(Manifest(rows, classes), ModalityArrays(speech), ModalityArrays(text),
                       labels.astype(np.int64), speakers.astype(np.int64),
                       [f"s{k}" for k in range(N_SPEAKERS)])


def plain_fit(model, data, train_idx: np.ndarray, val_idx: np.ndarray, epochs: int,
              batch_size: int, lr: float, weight_decay: float, grad_clip: float) -> None:
    """The bare loop: shuffle, step, one validation forward pass per epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(0)
    speech = torch.from_numpy(data.speech.pooled)  # (N, 50)
    text = torch.from_numpy(data.text.pooled)  # (N, 384)
    labels, speakers = torch.from_numpy(data.labels), torch.from_numpy(data.speakers)
    from fdrl.models.base import Inputs

    steps = epochs * -(-len(train_idx) // batch_size)
    k = 0
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=g)]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            model.set_progress(k / steps)
            k += 1
            out = model(Inputs(speech=speech[idx], text=text[idx]), labels=labels[idx],
                        speakers=speakers[idx])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        model.end_epoch()
        model.eval()
        with torch.no_grad():
            v = torch.from_numpy(val_idx)
            for start in range(0, len(v), 256):
                idx = v[start:start + 256]
                model(Inputs(speech=speech[idx], text=text[idx]))


def bench_trainer(n: int, epochs: int, repeats: int, batch_size: int, overrides: list[str]) -> dict:
    """Seconds of Trainer.fit and of the plain loop on the same data, alternately."""
    from fdrl.training.trainer import Trainer

    data = random_data(n, 4, seed=0)
    idx = np.random.default_rng(1).permutation(n)
    n_val = max(1, n // 10)
    val_idx, train_idx = np.sort(idx[:n_val]), np.sort(idx[n_val:])
    ov = [*overrides, f"train.epochs={epochs}", f"train.batch_size={batch_size}", "train.patience=0"]
    toolkit, plain = [], []
    for r in range(repeats + 1):  # the first pair warms up (allocations, lazy imports)
        cfg, model = build_fdrl(4, ov)
        trainer = Trainer(model, cfg.train, torch.device("cpu"), progress=False)
        t0 = time.perf_counter()
        trainer.fit(data, train_idx, val_idx)
        t_tool = time.perf_counter() - t0
        cfg, model = build_fdrl(4, ov)
        t0 = time.perf_counter()
        plain_fit(model, data, train_idx, val_idx, epochs, batch_size, cfg.train.lr,
                  cfg.train.weight_decay, cfg.train.grad_clip)
        t_plain = time.perf_counter() - t0
        if r > 0:
            toolkit.append(t_tool)
            plain.append(t_plain)
    ratios = [t / p for t, p in zip(toolkit, plain)]
    return {"n_train": int(len(train_idx)), "n_val": int(n_val), "epochs": epochs,
            "batch_size": batch_size, "repeats": repeats,
            "toolkit_s_median": statistics.median(toolkit), "plain_s_median": statistics.median(plain),
            "toolkit_s": toolkit, "plain_s": plain, "ratio_median": statistics.median(ratios),
            "ratios": ratios}


# ----------------------------------------------------------------------------------
# fdrl demo


def bench_demo(overrides: list[str]) -> dict:
    """Wall time and peak RSS of ``fdrl demo`` in a fresh folder, as a child process.

    The peak is measured through the harness's launcher (a child forked from this large
    process would inherit our peak RSS across ``execve``)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.suites.common import child_env, run_measured

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fdrl", "demo", "--quiet", "--data-dir", f"{tmp}/demo",
               f"run.out_dir={tmp}/runs", f"features.cache_dir={tmp}/cache", *overrides]
        m = run_measured(cmd, env=child_env())
    if m.returncode != 0:
        raise SystemExit(f"fdrl demo failed ({m.returncode}):\n{m.output[-3000:]}")
    last = [line for line in m.output.splitlines() if line.startswith("WAR ")]
    return {"command": " ".join(["fdrl", "demo", *overrides]), "seconds": m.seconds,
            "peak_rss_mb": m.peak_rss_mb, "summary": last[-1] if last else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", default="4,16", help="class counts to compare (first = base)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50, help="steps per timed block")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per model first")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks per class count (>= 3)")
    ap.add_argument("--trainer-n", type=int, default=800, help="utterances for trainer vs plain")
    ap.add_argument("--trainer-epochs", type=int, default=3, help="epochs per fit (0 skips it)")
    ap.add_argument("--target-ratio", type=float, default=1.5)
    ap.add_argument("--demo", action="store_true", help="also time `fdrl demo` (minutes)")
    ap.add_argument("--demo-overrides", nargs="*", default=[], metavar="key=value",
                    help="config overrides for `fdrl demo` (e.g. train.epochs=5)")
    ap.add_argument("--model-overrides", nargs="*", default=[], metavar="key=value",
                    help="config overrides for the timed FDRL model (e.g. model.d=128)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = [int(c) for c in args.classes.split(",")]

    result = {"classes": bench_classes(classes, args.batch_size, args.steps, args.repeats,
                                       args.warmup, args.model_overrides)}
    base, top = str(classes[0]), str(classes[-1])
    ratio = result["classes"]["per_class"][top].get("ratio_vs_base")
    result["target"] = {"what": f"step time C={top} <= {args.target_ratio}x C={base}",
                        "ratio": ratio, "limit": args.target_ratio,
                        "met": None if ratio is None else ratio <= args.target_ratio}
    if args.trainer_epochs > 0:
        result["trainer"] = bench_trainer(args.trainer_n, args.trainer_epochs, args.repeats,
                                          args.batch_size, args.model_overrides)
    result["peak_rss_mb_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.demo:
        result["demo"] = bench_demo(args.demo_overrides)
    result["machine"] = machine()

    pc = result["classes"]["per_class"]
    print(f"FDRL head training steps, batch {args.batch_size}, pooled inputs (speech {SPEECH_DIM}-d, "
          f"text {TEXT_DIM}-d), median of {args.repeats} blocks of {args.steps} steps:")
    for c, r in pc.items():
        extra = f"  ratio vs C={base}: {r['ratio_vs_base']:.2f}" if "ratio_vs_base" in r else ""
        print(f"  C = {c:>3}: {r['step_ms_median']:7.2f} ms/step = {r['steps_per_s']:7.1f} steps/s "
              f"({r['n_params']} parameters){extra}")
    t = result["target"]
    print(f"target {t['what']}: {'met' if t['met'] else 'NOT met'} (ratio {t['ratio']:.2f})")
    if "trainer" in result:
        tr = result["trainer"]
        print(f"Trainer.fit vs plain loop ({tr['n_train']} train / {tr['n_val']} val utterances, "
              f"{tr['epochs']} epochs): {tr['toolkit_s_median']:.2f} s vs {tr['plain_s_median']:.2f} s, "
              f"ratio {tr['ratio_median']:.2f} (median of {tr['repeats']} pairs)")
    if "demo" in result:
        d = result["demo"]
        print(f"`{d['command']}`: {d['seconds']:.1f} s wall, peak RSS {d['peak_rss_mb']:.0f} MB; {d['summary']}")
    m = result["machine"]
    print(f"machine: {m['cores']} cores, {m['cpu']}, torch {m['torch']} with {m['torch_threads']} "
          f"threads, load average {m['load_average_1min']}")
    if args.json:
        from fdrl.utils.io import write_json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)


if __name__ == "__main__":
    main()

"""Bad-input battery: every case ends in a clear one-line error (exit code 2) naming the
file, row or key, or in a documented recovery (``--skip-bad``), never in a traceback
or a half-written output.

Helpers shared by the battery's modules: small generated audio corpora, a
speech-only config that trains in a second, and checks on the CLI's error output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fdrl.data.manifest import write_manifest

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["neg", "pos"]

# A speech-only model on pooled log-mel features: no transformers model to load, so a
# whole two-fold CV run takes about a second.
FAST_CONFIG = """\
features:
  speech: {name: logmel, n_mels: 16, n_fft: 512, hop_length: 256}
  text: {name: none}
model: {name: speech-only, d: 8, hidden: 16, d_input: 16, dropout: 0.0}
train: {epochs: 2, batch_size: 8, patience: 0, device: cpu}
cv: {folds: [1, 2], val_fraction: 0.2}
run: {name: t, tensorboard: false, save_representations: false}
"""


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models train faster on one thread, and on a busy machine much faster: a second
    spinning OpenMP thread waits for a core. Import this fixture into a test module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tone(seconds: float = 0.3, sr: int = 16000, freq: float = 220.0, channels: int = 1,
         seed: int = 0) -> np.ndarray:
    """A sine with a little noise: (T,) or (T, channels) float32 in [-1, 1]."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).normal(size=t.size)
    x = x.astype(np.float32)  # (T,)
    return x if channels == 1 else np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1)


def write_wav(path: Path, seconds: float = 0.3, sr: int = 16000, channels: int = 1,
              freq: float = 220.0, seed: int = 0, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, sr, freq, channels, seed), sr, **kw)
    return path


def audio_corpus(root: Path, extra: list[dict] | None = None, sessions: int = 3,
                 per_class: int = 2) -> Path:
    """Good wav rows (sessions x 2 speakers x 2 classes x per_class) plus ``extra`` rows.

    ``extra`` rows need ``utt_id`` and ``audio`` (and may set anything else); they
    default to session 1, class 'neg', so the folds keep every class when they are
    dropped.
    """
    rows = []
    for s in range(1, sessions + 1):
        for g in "FM":
            for c, label in enumerate(CLASSES):
                for k in range(per_class):
                    utt = f"s{s}{g}_{label}_{k}"
                    wav = write_wav(root / "wav" / f"{utt}.wav", freq=200 + 150 * c + 7 * k,
                                    seed=len(rows))
                    rows.append({"utt_id": utt, "corpus": "battery", "session": s,
                                 "speaker": f"s{s}{g}", "label": label, "audio": str(wav),
                                 "text": None, "duration": 0.3})
    for e in extra or []:
        rows.append({"corpus": "battery", "session": 1, "speaker": "s1F", "label": "neg",
                     "text": None, "duration": None, **e})
    write_manifest(root, rows, CLASSES)
    return root


def fast_config(tmp_path: Path) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text(FAST_CONFIG)
    return path


def cv_args(tmp_path: Path, corpus: Path, *extra: str) -> list[str]:
    """``fdrl cv`` arguments for the fast config on ``corpus``."""
    return ["cv", "--config", str(fast_config(tmp_path)), "--quiet", f"data.manifest={corpus}",
            f"features.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path / 'runs'}", *extra]


def error_line(err: str) -> str:
    """The CLI's error line from captured stderr; checks the contract: no traceback,
    exactly one ``fdrl: error:`` line, and it is the first line of the error report
    (details, if any, follow on indented lines)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("fdrl: error: ")]
    assert len(starts) == 1, err
    assert all(line.startswith("  ") for line in lines[starts[0] + 1:]), err
    return lines[starts[0]]


def run_fdrl(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m fdrl ARGS`` in a real subprocess (the package from this checkout)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "fdrl", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)

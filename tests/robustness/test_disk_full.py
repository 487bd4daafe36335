"""A full disk during ``fdrl cv``: one line naming the file (exit code 1), never
PyTorch's RuntimeError traceback; the saved state stays intact and the run resumes.

torch's C++ file writer turns the operating system's ENOSPC into
``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``; fdrl hands
torch a Python file object instead (:func:`fdrl.checkpoint.save_torch`), so the
error stays an OSError with its errno, and names the file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import torch

from fdrl.checkpoint import save_torch
from fdrl.cli import main
from tests.robustness import REPO, audio_corpus, cv_args, error_line, one_torch_thread  # noqa: F401


def _full_disk_save(real_save):
    """``torch.save`` on a full disk: through a path torch's own writer fails with a
    RuntimeError (errno lost); through a Python file object the write raises ENOSPC."""
    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        f.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_save_torch_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "resume.pt"
    save_torch({"epoch": 1}, path)
    monkeypatch.setattr(torch, "save", _full_disk_save(torch.save))
    try:
        save_torch({"epoch": 2}, path)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC and exc.filename == str(path)
    else:
        raise AssertionError("no OSError")
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}  # intact
    assert [p.name for p in tmp_path.iterdir()] == ["resume.pt"]  # no temporary left


def test_full_disk_during_cv_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    corpus = audio_corpus(tmp_path / "c")
    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", _full_disk_save(torch.save))
    assert main(cv_args(tmp_path, corpus, "--run-dir", str(run))) == 1
    line = error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(run / "folds" / "1" / "resume.pt") in line
    monkeypatch.undo()
    assert main(["cv", "--resume", str(run), "--quiet"]) == 0
    assert (run / "results.json").is_file()


def test_file_size_limit_in_a_real_process(tmp_path):
    """The operating system refuses the write (RLIMIT_FSIZE: EFBIG, the same path as
    ENOSPC through torch's writer): one line naming resume.pt, exit code 1."""
    corpus = audio_corpus(tmp_path / "c")
    run = tmp_path / "run"
    args = cv_args(tmp_path, corpus, "--run-dir", str(run))
    code = ("import resource, signal, sys\n"
            "from fdrl.cli import main\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
            f"sys.exit(main({args!r}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    line = error_line(proc.stderr)
    assert "File too large" in line and str(run / "folds" / "1" / "resume.pt") in line

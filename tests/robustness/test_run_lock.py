"""One process per run folder and per bundle being written: a second ``fdrl cv
--resume`` of a running run (or an export onto a bundle being written) stops at once
with one line naming the folder and the other process, instead of training the same
folds and deleting the other process's temporary files. The lock is the operating
system's (flock): a killed holder never leaves a stale lock behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fdrl.cli import main
from fdrl.utils.lock import LOCK_NAME, acquire, release
from tests.robustness import REPO, audio_corpus, cv_args, error_line, one_torch_thread  # noqa: F401


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lock")
    run_dir = tmp / "run"
    assert main(cv_args(tmp, audio_corpus(tmp / "c"), "--run-dir", str(run_dir))) == 0
    assert not (run_dir / LOCK_NAME).exists()  # given back (and removed) at the end
    return run_dir


class Holder:
    """Another process that holds ``lock_file`` until it is killed."""

    def __init__(self, lock_file, what):
        code = ("import sys, time\nfrom fdrl.utils.lock import acquire\n"
                f"acquire({str(lock_file)!r}, {what!r})\nprint('held', flush=True)\ntime.sleep(120)\n")
        env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                     env=env)
        assert self.proc.stdout.readline().strip() == "held"

    def kill(self):
        self.proc.kill()  # as kill -9: no clean-up runs, the OS drops the lock
        self.proc.wait(timeout=30)


def test_second_resume_of_a_running_run_stops_with_one_line(run, capsys):
    (run / "results.json").unlink()  # as if the run had not finished
    tmp = run / "folds" / "1" / ".history.csv.abc.tmp"  # the running process's temporary file
    tmp.write_text("being written")
    holder = Holder(run / LOCK_NAME, "run folder")
    try:
        assert main(["cv", "--resume", str(run), "--quiet"]) == 2
        line = error_line(capsys.readouterr().err)
        assert line == (f"fdrl: error: {run}: another fdrl process (pid {holder.proc.pid}) is using "
                        f"this run folder; wait for it to finish or stop it")
        assert tmp.is_file() and not (run / "results.json").exists()  # nothing touched
        # asked again: still refused, still nothing touched
        assert main(["cv", "--resume", str(run), "--quiet"]) == 2
    finally:
        holder.kill()
    # killed: the lock is gone with the process; the run resumes and cleans up
    assert main(["cv", "--resume", str(run), "--quiet"]) == 0
    assert (run / "results.json").is_file() and not tmp.exists()
    assert not (run / LOCK_NAME).exists()


def test_fresh_run_into_a_locked_empty_folder_stops(tmp_path, capsys):
    folder = tmp_path / "new"
    folder.mkdir()
    holder = Holder(folder / LOCK_NAME, "run folder")
    try:
        corpus = audio_corpus(tmp_path / "c", sessions=2, per_class=1)
        assert main(cv_args(tmp_path, corpus, "--run-dir", str(folder))) == 2
        assert f"{folder}: another fdrl process (pid {holder.proc.pid})" in error_line(capsys.readouterr().err)
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()


def test_export_onto_a_bundle_being_written_stops(run, tmp_path, capsys):
    out = tmp_path / "bundles" / "b"
    out.parent.mkdir()
    holder = Holder(out.parent / ".b.lock", "bundle folder")
    try:
        assert main(["export", str(run), "--fold", "1", "--out", str(out)]) == 2
        line = error_line(capsys.readouterr().err)
        assert f"{out}: another fdrl process (pid {holder.proc.pid}) is using this bundle folder" in line
        assert not out.exists()
    finally:
        holder.kill()
    assert main(["export", str(run), "--fold", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["b"]  # no lock or staging left


def test_lock_is_reentrant_within_a_process(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    acquire(lock_file, "run folder")
    acquire(lock_file, "run folder")  # e.g. run_cv called by a command that holds it
    release(lock_file)
    assert lock_file.read_text().strip() == str(os.getpid())
    release(lock_file, remove=True)
    assert not lock_file.exists()

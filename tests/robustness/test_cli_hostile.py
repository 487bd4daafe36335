"""Hostile input and interrupted runs (issue 16): ``fdrl predict --out`` onto a foreign
file, undecodable or empty text, predictions resumed after the bundle or the inputs
changed, file modes of atomic writes, partial bundle folders left by a killed
``fdrl train``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from fdrl.cli import main
from fdrl.utils.io import atomic_path, write_text
from tests.robustness import error_line

# ----------------------------------------------------------------------------- file modes


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path, umask_027):
    from safetensors.torch import save_file
    import torch

    with atomic_path(tmp_path / "model.safetensors") as tmp:  # safetensors recreates the file
        save_file({"w": torch.zeros(2)}, str(tmp))
    write_text(tmp_path / "bundle.json", "{}")
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"model.safetensors": 0o640, "bundle.json": 0o640, "plain.txt": 0o640}
    # replacing a file keeps its mode, as open(path, "w") does
    os.chmod(tmp_path / "bundle.json", 0o604)
    write_text(tmp_path / "bundle.json", "[]")
    assert stat.S_IMODE((tmp_path / "bundle.json").stat().st_mode) == 0o604


# ----------------------------------------------------------------------------- fdrl predict


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.inference import demo_bundle

    return demo_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from tests.inference import demo_predictor

    return demo_predictor(tmp_path_factory)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    from tests.inference import demo_rows

    return demo_rows(tmp_path_factory)


def _inputs(path, rows, **change):
    """A predict manifest (JSONL, ASCII escapes) of ``rows``; ``change`` maps utt_id -> fields."""
    with open(path, "w", encoding="ascii") as fh:
        for r in rows:
            row = {"utt_id": r["utt_id"], "audio": r["audio"], "text": r["text"],
                   **change.get(r["utt_id"], {})}
            fh.write(json.dumps(row) + "\n")
    return path


FOREIGN = {
    "csv without a final newline": b"utt_id,label\nu1,angry\nu2,sad",
    "one word": b"hello",
    "other JSON lines": b'{"utt_id": "a", "audio": "a.wav"}\n{"utt_id": "b", "au',
    "not UTF-8": b"\xff\xfe{\n",
    "predictions, then a foreign last line": None,  # filled in below
}


def test_predict_out_onto_a_foreign_file_changes_nothing(bundle, predictor, rows, tmp_path, capsys):
    from fdrl.commands.inference import predict_manifest
    from fdrl.errors import DataError

    inputs = _inputs(tmp_path / "in.jsonl", rows[:3])
    good = tmp_path / "good.jsonl"
    predict_manifest(predictor, inputs, good, progress=False)
    FOREIGN["predictions, then a foreign last line"] = good.read_bytes() + b"u9,angry"
    for name, content in FOREIGN.items():
        out = tmp_path / "out.txt"
        out.write_bytes(content)
        with pytest.raises(DataError, match="choose a new --out"):
            predict_manifest(predictor, inputs, out, progress=False)
        assert out.read_bytes() == content, name

    # through the CLI: one line naming the file, exit code 2, the file as it was
    out.write_bytes(FOREIGN["csv without a final newline"])
    assert main(["predict", "--model", str(bundle), "--manifest", str(inputs), "--out", str(out),
                 "--quiet"]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{out}:1: not a prediction line" in line and "choose a new --out" in line
    assert out.read_bytes() == FOREIGN["csv without a final newline"]
    for bad in (inputs, tmp_path):  # the manifest itself, a folder
        assert main(["predict", "--model", str(bundle), "--manifest", str(inputs),
                     "--out", str(bad), "--quiet"]) == 2
        assert str(bad) in error_line(capsys.readouterr().err)
    assert inputs.read_bytes() == _inputs(tmp_path / "again.jsonl", rows[:3]).read_bytes()


def test_undecodable_and_empty_text_are_one_line_errors(bundle, rows, tmp_path, capsys):
    audio = rows[0]["audio"]
    # an undecodable byte in argv arrives as a surrogate (surrogateescape)
    for text, expect in (("caf\udce9", "--text: not valid UTF-8 (undecodable byte 0xe9 at character 4)"),
                         ("   ", "--text: empty transcript '   '"), ("", "--text: empty transcript ''")):
        assert main(["predict", "--model", str(bundle), "--audio", audio, "--text", text]) == 2
        assert expect in error_line(capsys.readouterr().err)
    # and for real: a byte that is not UTF-8 on the command line of a subprocess
    from tests.robustness import run_fdrl

    proc = run_fdrl("predict", "--model", str(bundle), "--audio", audio, "--text", b"caf\xe9")
    assert proc.returncode == 2
    assert "undecodable byte 0xe9" in error_line(proc.stderr)


def test_bad_text_in_a_predict_manifest_is_skipped_with_its_reason(bundle, rows, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in.jsonl", rows[:4], **{
        rows[1]["utt_id"]: {"text": "x\ud800"},        # JSON "\ud800": an unpaired surrogate
        rows[2]["utt_id"]: {"text": " \t "},
        rows[3]["utt_id"]: {"audio": "/data/\ud800.wav"}})
    out = tmp_path / "preds.jsonl"
    args = ["predict", "--model", str(bundle), "--manifest", str(inputs), "--out", str(out), "--quiet"]
    assert main(args) == 2  # the first row is good, the second stops the run
    line = error_line(capsys.readouterr().err)
    assert f"{inputs}:2: utterance '{rows[1]['utt_id']}': text is not valid UTF-8 (unpaired " \
           f"surrogate U+D800 at character 2)" in line
    assert len(out.read_text().splitlines()) == 1  # the row before it is kept

    assert main(args + ["--skip-bad"]) == 0
    assert "1 already in" in capsys.readouterr().err
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["utt_id"] for x in lines] == [r["utt_id"] for r in rows[:4]]
    assert "probabilities" in lines[0]
    assert "unpaired surrogate U+D800" in lines[1]["error"]
    assert "empty transcript ' \\t '" in lines[2]["error"]
    assert "'audio' path is not valid Unicode" in lines[3]["error"]


def test_features_refuses_a_manifest_with_an_unpaired_surrogate(tmp_path_factory, tmp_path, capsys):
    from tests.inference import demo_root

    _, demo = demo_root(tmp_path_factory)
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "labels.json").write_bytes((demo / "labels.json").read_bytes())
    lines = (demo / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines[:6]]
    rows[4]["text"] = "caf\udce9 \ud800"
    with open(corpus / "manifest.jsonl", "w", encoding="ascii") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    assert main(["features", str(corpus), "--speech", "none", "--cache-dir",
                 str(tmp_path / "cache")]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{corpus / 'manifest.jsonl'}:5: field 'text' is not valid Unicode text " \
           f"(undecodable byte 0xe9 at character 4)" in line


def test_text_encoder_refuses_surrogates():
    from fdrl.encoders.text import HFTextEncoder
    from fdrl.errors import DataError

    enc = HFTextEncoder("minilm")
    with pytest.raises(DataError, match=r"text 2 of 2 is not valid Unicode text \(unpaired surrogate U\+D800"):
        enc.encode(["fine", "bad \ud800"])


def test_predict_resume_refuses_another_bundle_or_changed_inputs(bundle, predictor, rows, tmp_path,
                                                                capsys):
    import shutil

    import fdrl
    from fdrl.commands.inference import predict_manifest
    from fdrl.errors import DataError

    inputs = _inputs(tmp_path / "in.jsonl", rows[:3])
    out = tmp_path / "preds.jsonl"
    predict_manifest(predictor, inputs, out, progress=False)
    first = out.read_bytes()
    lines = [json.loads(x) for x in first.decode().splitlines()]
    assert {x["bundle_fingerprint"] for x in lines} == {predictor.fingerprint}
    assert len({x["input_fingerprint"] for x in lines}) == 3

    # another bundle: the same model with one weight changed
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    more = _inputs(tmp_path / "more.jsonl", rows[:4])
    with pytest.raises(DataError, match=r"preds.jsonl:1: predicted with another model bundle"):
        predict_manifest(fdrl.load(other), more, out, progress=False)
    assert out.read_bytes() == first

    # changed inputs: the text of a row, the audio file of another
    changed = _inputs(tmp_path / "changed.jsonl", rows[:4], **{rows[1]["utt_id"]: {"text": "Other words."}})
    with pytest.raises(DataError, match=rf"preds.jsonl:2: utterance '{rows[1]['utt_id']}' was "
                                        rf"predicted from other input .*changed.jsonl:2"):
        predict_manifest(predictor, changed, out, progress=False)
    wav = tmp_path / "copy.wav"
    shutil.copy(rows[2]["audio"], wav)
    copied = [*rows[:2], dict(rows[2], audio=str(wav))]
    out2 = tmp_path / "preds2.jsonl"
    predict_manifest(predictor, _inputs(tmp_path / "c.jsonl", copied), out2, progress=False)
    before = out2.read_bytes()
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # re-recorded: a new mtime
    assert main(["predict", "--model", str(bundle), "--manifest", str(tmp_path / "c.jsonl"),
                 "--out", str(out2), "--quiet"]) == 2
    assert f"{out2}:3: utterance '{rows[2]['utt_id']}' was predicted from other input" in \
        error_line(capsys.readouterr().err)
    assert out2.read_bytes() == before

    # nothing changed: the new row is added, the old ones are kept
    assert predict_manifest(predictor, more, out, progress=False)["predicted"] == 1
    assert out.read_bytes().startswith(first) and len(out.read_text().splitlines()) == 4


# ----------------------------------------------------------------------------- fdrl train


def _staging(parent, name, owner=None, age_s=0.0):
    """A staging folder like a `fdrl train` one; ``owner``: the pid file's content."""
    from fdrl.training.full import PID_FILE

    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "history.csv").write_text("epoch\n1\n")
    if owner is not None:
        (folder / PID_FILE).write_text(json.dumps(owner))
    if age_s:
        t = os.stat(folder).st_mtime - age_s
        for p in (*folder.iterdir(), folder):
            os.utime(p, (t, t))
    return folder


def test_stale_partial_bundle_folders_are_removed_live_ones_kept(tmp_path):
    import socket

    from fdrl.training.full import _process_start, clean_stale_partials

    host = socket.gethostname()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = _process_start(alive.pid)
        dead = _staging(tmp_path, ".demo-1.partial-0123abcd", {"pid": ended.pid, "host": host})
        reused = _staging(tmp_path, ".demo-2.partial-0123abce",
                          {"pid": alive.pid, "host": host, "start": "1"})  # pid now another process
        old = _staging(tmp_path, ".demo-3.partial-0123abcf", age_s=3 * 24 * 3600)  # no pid file
        keep = [
            _staging(tmp_path, ".demo-4.partial-89abcdef", {"pid": alive.pid, "host": host,
                                                             "start": start}),
            _staging(tmp_path, ".demo-5.partial-89abcdee"),  # no pid file, recent: maybe an export
            _staging(tmp_path, ".demo-6.partial-89abcded", {"pid": ended.pid, "host": "elsewhere"}),
            _staging(tmp_path, ".demo-7.partial-89abcdec", {"pid": os.getpid(), "host": host,
                                                             "start": _process_start(os.getpid())}),
            _staging(tmp_path, "demo-8.partial-89abcdeb", {"pid": ended.pid, "host": host}),
            _staging(tmp_path, ".demo-9.other-89abcdea", {"pid": ended.pid, "host": host}),
        ]
        assert sorted(clean_stale_partials(tmp_path)) == sorted([dead, reused, old])
        assert all(p.is_dir() for p in keep) and not any(p.exists() for p in (dead, reused, old))
    finally:
        alive.kill()
        alive.wait()


def test_killed_train_leaves_a_partial_folder_the_next_run_removes(tmp_path, capsys):
    import signal
    import time

    from fdrl.training.full import PID_FILE
    from tests.robustness import REPO, audio_corpus, fast_config

    corpus = audio_corpus(tmp_path / "corpus")
    cfg = fast_config(tmp_path)
    parent = tmp_path / "bundles"
    common = ["--config", str(cfg), "--quiet", f"data.manifest={corpus}",
              f"features.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fdrl", "train", *common, "train.epochs=100000",
                                 "--out", str(parent / "killed")], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 120
        while not list(parent.glob(f".killed.partial-*/{PID_FILE}")):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "err.txt").read_text()
            time.sleep(0.05)
        partial = next(parent.glob(".killed.partial-*"))
        # while its writer trains, another run leaves the folder alone
        assert main(["train", *common, "--out", str(parent / "a")]) == 0
        assert partial.is_dir()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert partial.is_dir()  # a kill leaves it behind ...
    assert main(["train", *common, "--out", str(parent / "b")]) == 0
    assert not partial.exists()  # ... and the next run removes it
    assert not list(parent.glob(".*.partial-*")) and (parent / "a").is_dir()
    assert PID_FILE not in {p.name for p in (parent / "b").iterdir()}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (parent / "b").iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes  # model.safetensors included

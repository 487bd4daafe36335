"""Manifest rows: unknown labels, duplicate ids, missing files, broken lines and folds
without some class, each a one-line error naming the row (or file) before any run
folder exists."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fdrl.cli import main
from fdrl.data.manifest import write_manifest
from tests.robustness import error_line, one_torch_thread  # noqa: F401

NPY_CONFIG = """\
features: {speech: {name: precomputed}, text: {name: none}}
model: {name: speech-only, d: 8, hidden: 16, d_input: 16, dropout: 0.0}
train: {epochs: 2, batch_size: 8, patience: 0, device: cpu}
cv: {folds: [1, 2], val_fraction: 0.2}
run: {name: t, tensorboard: false, save_representations: false}
"""


def _npy_corpus(root, classes_by_session=None, extra=()):
    """Rows with precomputed (frames, 4) features: 3 sessions x 2 classes x 4 rows."""
    rng = np.random.default_rng(0)
    (root / "f").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in (1, 2, 3):
        for label in (classes_by_session or {}).get(s, ("neg", "pos")):
            for k in range(4):
                utt = f"s{s}_{label}_{k}"
                np.save(root / "f" / f"{utt}.npy", rng.normal(size=(6, 4)).astype(np.float32))
                rows.append({"utt_id": utt, "corpus": "m", "session": s, "speaker": f"s{s}",
                             "label": label, "audio": None, "text": None, "duration": None,
                             "features": f"f/{utt}.npy"})
    rows += [{"corpus": "m", "session": 1, "speaker": "s1", "label": "neg", "audio": None,
              "text": None, "duration": None, **e} for e in extra]
    write_manifest(root, rows, ["neg", "pos"])
    return root


def _args(tmp_path, corpus, *extra):
    cfg = tmp_path / "npy.yaml"
    cfg.write_text(NPY_CONFIG)
    return ["cv", "--config", str(cfg), "--quiet", f"data.manifest={corpus}",
            f"features.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path / 'runs'}", *extra]


def _edit_manifest(corpus, fn):
    path = corpus / "manifest.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    fn(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unknown_label_names_row_and_classes(tmp_path, capsys):
    corpus = _npy_corpus(tmp_path / "c")
    path = _edit_manifest(corpus, lambda rows: rows[6].update(label="angry"))
    assert main(_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert str(path) in line and "row 7" in line and "'angry'" in line and "['neg', 'pos']" in line


def test_duplicate_utt_id_in_manifest(tmp_path, capsys):
    corpus = _npy_corpus(tmp_path / "c")
    _edit_manifest(corpus, lambda rows: rows[9].update(utt_id=rows[2]["utt_id"]))
    assert main(_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert "row 10" in line and "duplicate utt_id 's1_neg_2'" in line


def test_duplicate_utt_id_in_a_users_table_lists_every_line(tmp_path, capsys):
    (tmp_path / "a.npy").write_bytes(b"")
    table = tmp_path / "corpus.csv"
    table.write_text("utt_id,label,text\nu1,neg,hello\nu2,pos,hi\nu1,pos,again\nu2,neg,more\n")
    out = tmp_path / "prepared"
    assert main(["prepare", "manifest", str(table), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = error_line(err)  # summary line, then one indented line per problem
    assert str(table) in line and "2 problem(s)" in line and "nothing was written" in line
    assert "line 4: duplicate utt_id 'u1' (first on line 2)" in err
    assert "line 5: duplicate utt_id 'u2' (first on line 3)" in err
    assert not out.exists()


def test_missing_features_file_names_it_and_skip_bad_recovers(tmp_path, capsys):
    corpus = _npy_corpus(tmp_path / "c", extra=[{"utt_id": "lost", "features": "f/lost.npy"}])
    assert main(_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert "('lost')" in line and "features file not found" in line and str(corpus / "f" / "lost.npy") in line
    assert main(_args(tmp_path, corpus, "--skip-bad")) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert [s["utt_id"] for s in json.loads((run_dir / "run.json").read_text())["skipped"]] == ["lost"]


def test_corrupt_features_file_is_found_and_skippable(tmp_path, capsys):
    corpus = _npy_corpus(tmp_path / "c", extra=[{"utt_id": "junk", "features": "f/junk.npy"}])
    (corpus / "f" / "junk.npy").write_bytes(b"not numpy at all")
    assert main(_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert "('junk')" in line and "junk.npy" in line
    assert main(_args(tmp_path, corpus, "--skip-bad")) == 0


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_text(p.read_text() + "{not json\n"), ":25: not valid JSON"),
    (lambda p: p.write_text(p.read_text() + '["a", "list"]\n'), ":25: expected a JSON object"),
    (lambda p: p.write_text(p.read_text() + '{"utt_id": "x", "label": ""}\n'), ":25: field 'label'"),
    (lambda p: p.unlink(), "manifest not found"),
])
def test_broken_manifest_file(tmp_path, capsys, damage, words):
    corpus = _npy_corpus(tmp_path / "c")
    damage(corpus / "manifest.jsonl")
    assert main(_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert "manifest.jsonl" in line and words in line, line


def test_fold_whose_training_part_lacks_a_class(tmp_path, capsys):
    # 'pos' only in session 1: fold 1 trains on sessions 2 and 3, which have no 'pos'
    corpus = _npy_corpus(tmp_path / "c", classes_by_session={1: ("neg", "pos"), 2: ("neg",), 3: ("neg",)})
    run_dir = tmp_path / "mine"
    assert main(_args(tmp_path, corpus, "--run-dir", str(run_dir))) == 2
    line = error_line(capsys.readouterr().err)
    assert "fold 1 (test group 1)" in line and "no 'pos' utterances" in line
    assert not run_dir.exists() and not (tmp_path / "runs").exists()

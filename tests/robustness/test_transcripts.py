"""Transcripts: empty or whitespace-only ones are missing input for a text model (an
error naming the row, or skipped with --skip-bad); files that are not UTF-8 are named
with their line, whichever command reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fdrl.cli import main
from fdrl.data.manifest import write_manifest
from tests.robustness import error_line, one_torch_thread  # noqa: F401

TEXT_CONFIG = """\
features: {speech: {name: none}, text: {name: minilm}}
model: {name: text-only, d: 8, hidden: 16, d_input: 16, dropout: 0.0}
train: {epochs: 2, batch_size: 8, patience: 0, device: cpu}
cv: {folds: [1, 2], val_fraction: 0.2}
run: {name: t, tensorboard: false, save_representations: false}
"""
WORDS = {"neg": ["awful", "hate", "sad", "no"], "pos": ["great", "love", "happy", "yes"]}


def _text_corpus(root, extra: list[dict]):
    rows = []
    for s in (1, 2, 3):
        for label, words in WORDS.items():
            for k in range(4):
                rows.append({"utt_id": f"s{s}_{label}_{k}", "corpus": "t", "session": s,
                             "speaker": f"s{s}", "label": label, "audio": None,
                             "text": f"{words[k]} {words[(k + 1) % 4]} today", "duration": None})
    for e in extra:
        rows.append({"corpus": "t", "session": 1, "speaker": "s1", "label": "neg", "audio": None,
                     "duration": None, **e})
    write_manifest(root, rows, list(WORDS))
    return root


def _args(tmp_path, corpus, *extra):
    cfg = tmp_path / "text.yaml"
    cfg.write_text(TEXT_CONFIG)
    return ["cv", "--config", str(cfg), "--quiet", f"data.manifest={corpus}",
            f"features.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path / 'runs'}", *extra]


@pytest.mark.parametrize("text", ["", "   \t ", None])
def test_empty_transcript_names_the_row(tmp_path, capsys, text):
    corpus = _text_corpus(tmp_path / "c", [{"utt_id": "blank", "text": text}])
    assert main(_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert "row 25 ('blank')" in line and "transcript" in line and "--skip-bad" in line, line
    assert not (tmp_path / "runs").exists()


def test_skip_bad_drops_empty_transcripts(tmp_path, capsys):
    corpus = _text_corpus(tmp_path / "c", [{"utt_id": "empty", "text": ""},
                                           {"utt_id": "spaces", "text": "  \n "}])
    assert main(_args(tmp_path, corpus, "--skip-bad")) == 0
    assert "skipped 2 utterance(s)" in capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert [s["utt_id"] for s in meta["skipped"]] == ["empty", "spaces"]
    assert all("empty transcript" in s["reason"] for s in meta["skipped"])


def test_no_transcript_at_all_is_a_config_problem_not_a_skip(tmp_path, capsys):
    corpus = tmp_path / "c"
    write_manifest(corpus, [{"utt_id": f"u{i}", "corpus": "t", "session": i % 2, "speaker": "a",
                             "label": "neg" if i % 2 else "pos", "audio": None, "text": None,
                             "duration": None} for i in range(8)], ["neg", "pos"])
    assert main(_args(tmp_path, corpus, "--skip-bad")) == 2
    line = error_line(capsys.readouterr().err)
    assert "no row has a transcript" in line and "features.text.name=none" in line


def _latin1(path, text):
    path.write_bytes(text.encode("latin-1"))
    return path


def test_non_utf8_corpus_table_names_file_and_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "a.wav").write_bytes(b"")  # existence is all `prepare manifest` checks
    table = _latin1(tmp_path / "corpus.csv",
                    "utt_id,label,text,audio\nu1,neg,fine,a.wav\nu2,pos,très bien,a.wav\n")
    out = tmp_path / "prepared"
    assert main(["prepare", "manifest", str(table), "--out", str(out)]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{table}:3" in line and "UTF-8" in line
    assert not out.exists()


def test_non_utf8_manifest_names_file_and_line(tmp_path, capsys):
    corpus = _text_corpus(tmp_path / "c", [])
    manifest = corpus / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    lines[4] = lines[4].replace("today", "caf\u00e9")
    _latin1(manifest, "\n".join(lines) + "\n")
    assert main(_args(tmp_path, corpus)) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{manifest}:5" in line and "UTF-8" in line


def test_non_utf8_transcripts_of_a_feature_dump(tmp_path, capsys):
    np.savez(tmp_path / "store.npz", u1=np.ones((5, 4), np.float32), u2=np.zeros((3, 4), np.float32))
    tr = _latin1(tmp_path / "t.jsonl", '{"utt_id": "u1", "text": "ol\u00e9", "label": "pos"}\n')
    assert main(["prepare", "features", str(tmp_path / "store.npz"), "--transcripts", str(tr),
                 "--out", str(tmp_path / "out")]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(tr) in line and "UTF-8" in line
    assert not (tmp_path / "out").exists()


def test_non_utf8_emodb_table(tmp_path, capsys):
    root = tmp_path / "emodb"
    root.mkdir()
    _latin1(root / "labels.csv", "file,speaker,gender,emotion,text\nwav/a.wav,03,m,anger,Gr\u00fc\u00dfe\n")
    assert main(["prepare", "emodb", str(root), "--out", str(tmp_path / "out")]) == 2
    line = error_line(capsys.readouterr().err)
    assert "labels.csv" in line and "UTF-8" in line

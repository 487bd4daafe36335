"""User corpus tables (CSV/JSONL): validation messages, label maps, and `fdrl prepare manifest`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fdrl.commands import prepare as prepare_cmd
from fdrl.data.custom import parse_label_map, prepare_custom
from fdrl.data.manifest import read_manifest
from fdrl.errors import ConfigError, DataError


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(800, 0.1, dtype=np.float32), 16000)
    return path


def _run_cli(argv: list[str]) -> int:
    """Run `fdrl prepare ...` with only this module's parser (other commands are not needed)."""
    parser = argparse.ArgumentParser(prog="fdrl")
    prepare_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_csv_relative_paths_label_map_and_derived_ids(tmp_path):
    _wav(tmp_path / "corpus" / "wav" / "a1.wav")
    _wav(tmp_path / "corpus" / "wav" / "b2.wav")
    np.save(tmp_path / "corpus" / "f3.npy", np.zeros((5, 4), dtype=np.float32))
    csv_file = tmp_path / "corpus" / "list.csv"
    csv_file.write_text(
        "audio,features,text,label,speaker,session,duration,x_note\n"
        "wav/a1.wav,,hello there,angry,s1,1,0.05,first\n"
        "wav/b2.wav,,,happy,s2,2,,\n"
        ",f3.npy,so sad,sad,s1,10,,\n"
        ",,who cares,bored,s3,2,,\n"
    )
    path = prepare_custom(csv_file, tmp_path / "out", label_map={"angry": "ang", "bored": None})
    m = read_manifest(path)
    assert m.classes == ["ang", "happy", "sad"]  # sorted after mapping; 'bored' rows dropped
    rows = {r["utt_id"]: r for r in m.rows}
    assert set(rows) == {"a1", "b2", "row4"}  # stems of audio files, else the line number
    assert rows["a1"]["audio"] == str((tmp_path / "corpus" / "wav" / "a1.wav").resolve())
    assert rows["a1"]["label"] == "ang" and rows["a1"]["label_raw"] == "angry"
    assert rows["a1"]["duration"] == 0.05 and rows["a1"]["x_note"] == "first"
    assert rows["a1"]["session"] == 1 and rows["row4"]["session"] == 10
    assert rows["b2"]["text"] is None and rows["b2"]["duration"] is None
    assert rows["row4"]["features"] == str((tmp_path / "corpus" / "f3.npy").resolve())
    assert rows["a1"]["corpus"] == "list"


def test_all_problems_reported_together_and_nothing_written(tmp_path):
    _wav(tmp_path / "ok.wav")
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text(
        "utt_id,audio,text,label,speeker\n"  # line 1: typo in a column name
        "u1,ok.wav,hi,neu,s1\n"
        "u2,missing.wav,hi,neu,s1\n"  # line 3: file not found
        "u3,,hi,,s1\n"  # line 4: empty label
        "u1,,hi,sad,s2\n"  # line 5: duplicate id
        "u5,,,sad,s2\n"  # line 6: no input at all
    )
    with pytest.raises(DataError) as err:
        prepare_custom(csv_file, tmp_path / "out")
    msg = str(err.value)
    lines = msg.splitlines()
    assert "5 problem(s)" in lines[0] and "nothing was written" in lines[0]
    assert "line 1: unknown column 'speeker' (did you mean 'speaker'?" in msg
    assert "line 3: audio file not found" in msg and "missing.wav" in msg
    assert "line 4: empty label" in msg
    assert "line 5: duplicate utt_id 'u1' (first on line 2)" in msg
    assert "line 6: none of audio, features, text" in msg
    assert len(lines) == 6
    assert not (tmp_path / "out").exists()


def test_long_problem_lists_are_capped(tmp_path):
    jsonl = tmp_path / "many.jsonl"
    jsonl.write_text("".join(json.dumps({"utt_id": f"u{i}", "text": "x", "label": ""}) + "\n"
                             for i in range(80)))
    with pytest.raises(DataError) as err:
        prepare_custom(jsonl, tmp_path / "out")
    lines = str(err.value).splitlines()
    assert len(lines) == 1 + 50 + 1 and lines[-1].strip() == "... and 30 more"


def test_jsonl_errors_point_at_their_lines(tmp_path):
    store = tmp_path / "feats.npz"
    np.savez(store, a=np.zeros((3, 2), dtype=np.float32))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        json.dumps({"utt_id": "a", "features": "feats.npz#a", "label": "x"}) + "\n"
        "\n"
        "{not json\n"
        + json.dumps({"utt_id": "b", "features": "feats.npz#zz", "label": "x", "lable": 1}) + "\n"
        + json.dumps({"utt_id": "c", "text": "t", "label": "x", "duration": "long"}) + "\n"
    )
    with pytest.raises(DataError) as err:
        prepare_custom(jsonl, tmp_path / "out")
    msg = str(err.value)
    assert "line 3: not valid JSON" in msg
    assert "line 4: unknown column 'lable' (did you mean 'label'?" in msg
    assert "line 4: no utterance 'zz' in feature store" in msg
    assert "line 5: duration must be a non-negative number" in msg


def test_non_utf8_file(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\nok,neu\nGr\u00fc\u00dfe,neu\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv:3: file is not UTF-8"):
        prepare_custom(bad, tmp_path / "out")


def test_explicit_classes_must_contain_every_label(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("text,label\na,neu\nb,sad\n")
    with pytest.raises(DataError, match="line 3: label 'sad' is not one of the classes"):
        prepare_custom(f, tmp_path / "out", classes=["neu", "ang"])
    m = read_manifest(prepare_custom(f, tmp_path / "out", classes=["sad", "neu"]))
    assert m.classes == ["sad", "neu"]


def test_parse_label_map_forms(tmp_path):
    assert parse_label_map("exc=hap, fru=") == {"exc": "hap", "fru": None}
    y = tmp_path / "map.yaml"
    y.write_text("exc: hap\nfru: null\n")
    assert parse_label_map(y) == {"exc": "hap", "fru": None}
    j = tmp_path / "map.json"
    j.write_text('{"exc": "hap", "oth": ""}')
    assert parse_label_map(str(j)) == {"exc": "hap", "oth": None}
    with pytest.raises(ConfigError, match="old=new"):
        parse_label_map("exc:hap")
    with pytest.raises(ConfigError, match="not found"):
        parse_label_map(tmp_path / "absent.json")


def test_cli_prepare_manifest(tmp_path, capsys):
    f = tmp_path / "c.tsv"
    f.write_text("text\tlabel\tspeaker\na\texc\ts1\nb\tsad\ts2\nc\tfru\ts2\n")
    rc = _run_cli(["prepare", "manifest", str(f), "--out", str(tmp_path / "o"),
                   "--label-map", "exc=hap,fru=", "--corpus", "mine"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("2 utterances (hap: 1, sad: 1) -> ") and str(tmp_path / "o") in out
    assert read_manifest(tmp_path / "o").rows[0]["corpus"] == "mine"

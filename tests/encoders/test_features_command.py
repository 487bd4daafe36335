import json

import numpy as np
import soundfile as sf

from fdrl.cli import main
from fdrl.data.manifest import write_manifest

from .conftest import sine


def _corpus(tmp_path):
    rows = []
    for i in range(4):
        sf.write(tmp_path / f"w{i}.wav", sine(0.25, seed=i), 16000)
        rows.append({"utt_id": f"w{i}", "corpus": "t", "session": 1, "speaker": "s", "label": "a",
                     "audio": f"w{i}.wav", "text": ["yes", "i love this", "no", ""][i], "duration": 0.25})
    write_manifest(tmp_path / "data", [dict(r, audio=str(tmp_path / r["audio"])) for r in rows], ["a"])
    return tmp_path / "data"


def test_features_command_encodes_then_reuses(tmp_path, capsys, tiny_bert_dir):
    data = _corpus(tmp_path)
    args = ["features", str(data), "--speech", '{"name": "logmel", "n_mels": 32}',
            "--text", str(tiny_bert_dir), "--cache-dir", str(tmp_path / "cache"), "--sequences"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "speech logmel" in out and "dim 64, sequences (L, 32): 4 encoded, 0 from cache" in out
    assert "text   hf" in out and "dim 32" in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("0 encoded, 4 from cache") == 2 and "all cached" in out
    assert main(["features", "--info", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "4 utterances (4 with sequences)" in capsys.readouterr().out


def test_features_command_user_errors_exit_2(tmp_path, capsys):
    data = _corpus(tmp_path)
    assert main(["features", str(data), "--speech", "logmell", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "did you mean 'logmel'" in capsys.readouterr().err
    assert main(["features", str(data), "--speech", "{name: logmel, nmels: 3}", "--text", "none",
                 "--cache-dir", str(tmp_path / "c")]) == 2
    assert "did you mean 'n_mels'" in capsys.readouterr().err


def test_features_command_precomputed_dump_records_its_source(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32))
    write_manifest(tmp_path / "dump", [{"utt_id": "u", "label": "a", "audio": None, "text": None,
                                        "features": str(tmp_path / "f.npy")}], ["a"],
                   {"speech_features": {"name": "logmel", "n_mels": 4}})
    assert main(["features", str(tmp_path / "dump"), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "speech precomputed" in out and "dim 8" in out and "text   none (skipped)" in out
    meta = json.loads(next((tmp_path / "c").glob("speech-precomputed-*/encoder.json")).read_text())
    assert meta["spec"]["source"] == {"name": "logmel", "n_mels": 4}

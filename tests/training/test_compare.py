"""``fdrl compare``: per-model configurations, an end-to-end run on the tiny corpus
through the CLI, and resuming."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from fdrl.cli import main
from fdrl.errors import ConfigError
from fdrl.training.compare import make_plan, model_config
from tests.conftest import tiny_overrides


def test_plan_gives_each_model_its_own_section(tmp_path):
    cfg_file = tmp_path / "cmp.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "data": {"manifest": "x"},
        "model": {"name": "fdrl", "d": 32, "hidden": 48, "beta": 0.25},
        "train": {"epochs": 2},
        "compare": {"default_models": ["fdrl", "foalnet", "concat"],
                    "models": {"foalnet": {"proj_dim": 16}}},
    }))
    plan = make_plan(str(cfg_file), None, ["train.lr=0.01", "model.dropout=0.3", "concat.hidden=20"])
    assert plan.models == ["fdrl", "foalnet", "concat"]
    fdrl, foal, concat = (model_config(plan, m, 0) for m in plan.models)
    assert fdrl.model.beta == 0.25 and fdrl.model.d == 32         # its own section, all of it
    assert foal.model.d == 32 and foal.model.proj_dim == 16       # shared key + compare.models
    assert concat.model.hidden == 20 and concat.model.d == 32     # <model>.KEY wins
    assert all(c.model.dropout == 0.3 for c in (fdrl, foal, concat))   # model.KEY: every model
    assert all(c.train.lr == 0.01 and c.train.epochs == 2 for c in (fdrl, foal, concat))
    assert {c.run.name for c in (fdrl, foal, concat)} == {"fdrl-seed0", "foalnet-seed0", "concat-seed0"}

    # model.KEY goes only to the models that have KEY (identity: fdrl yes, foalnet no)
    plan = make_plan(str(cfg_file), ["fdrl", "foalnet"], ["model.identity={method: multitask}"])
    assert plan.sections["fdrl"]["identity"] == {"method": "multitask"}
    assert "identity" not in plan.sections["foalnet"]
    with pytest.raises(ConfigError, match="none of the compared models"):
        make_plan(str(cfg_file), ["foalnet", "concat"], ["model.beta=1"])
    with pytest.raises(ConfigError, match="did you mean 'foalnet'"):
        make_plan(str(cfg_file), ["foalnett"])
    with pytest.raises(ConfigError, match="--models"):
        make_plan(str(cfg_file), ["concat"], ["model.name=misa"])
    with pytest.raises(ConfigError, match="concat.*proj_dim"):
        make_plan(str(cfg_file), ["concat"], ["concat.proj_dim=3"])
    with pytest.raises(ConfigError, match="override 'misa.d=3'"):
        make_plan(str(cfg_file), ["concat"], ["misa.d=3"])


def test_labelled_variants_of_one_model(tmp_path):
    cfg_file = tmp_path / "cmp.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": {"name": "concat", "d": 24}}))
    plan = make_plan(str(cfg_file), ["multitask", "adv=multitask", "orth=multitask"],
                     ["adv.identity.method=adversarial", "orth.identity={method: orthogonality}",
                      "model.identity.weight=0.5"], probe=True)
    assert plan.models == ["multitask", "adv", "orth"] and plan.reference == "multitask"
    cfgs = {m: model_config(plan, m, 3) for m in plan.models}
    assert {c.model_name for c in cfgs.values()} == {"multitask"}
    assert cfgs["adv"].model.identity == {"method": "adversarial", "weight": 0.5}
    assert cfgs["orth"].model.identity["method"] == "orthogonality"
    # a partial identity mapping replaces the default one; multitask fills in its method
    assert cfgs["multitask"].model.identity == {"weight": 0.5}
    assert cfgs["adv"].model.d == 24 and cfgs["adv"].run.name == "adv-seed3"
    with pytest.raises(ConfigError, match="twice"):
        make_plan(str(cfg_file), ["concat", "concat"])
    with pytest.raises(ConfigError, match="config section"):
        make_plan(str(cfg_file), ["train=concat"])
    with pytest.raises(ConfigError, match="no '.'"):
        make_plan(str(cfg_file), ["w0.1=concat"])


def _compare(tmp_path, tiny_corpus, feature_cache, *extra):
    args = ["compare", "--config", "demo", "--models", "speech-only,concat", "--folds", "1,2",
            "--probe", "--quiet", *tiny_overrides(tiny_corpus, feature_cache, tmp_path / "runs"),
            "train.epochs=2", *extra]
    assert main(args) == 0
    (cmp_dir,) = list((tmp_path / "runs").iterdir())
    return cmp_dir


def test_compare_two_models_two_folds_through_the_cli(tmp_path, tiny_corpus, feature_cache, capsys):
    cmp_dir = _compare(tmp_path, tiny_corpus, feature_cache)
    out = capsys.readouterr().out
    assert "speech-only" in out and "concat" in out and "compare.md" in out
    assert cmp_dir.name.startswith("compare-tiny-")
    summary = json.loads((cmp_dir / "compare.json").read_text())
    assert [r["model"] for r in summary["models"]] == ["speech-only", "concat"]
    for row in summary["models"]:
        assert row["seeds_done"] == 1 and row["war"]["n_values"] == 2
        assert 0.0 <= row["uar"]["mean"] <= 1.0
        assert row["runs"][0]["test_groups"] == ["1", "2"]
        p = row["probe"]
        assert p["embedding"] == "emotion" and p["chance"] == pytest.approx(1 / 4)
        assert 0.0 <= p["accuracy"] <= 1.0 and p["fold_chance"] == pytest.approx(0.5)
    # same folds and features: both runs saw the same test utterances
    reps = [json.loads((cmp_dir / r["runs"][0]["run_dir"] / "folds" / "1" / "metrics.json").read_text())
            for r in summary["models"]]
    assert reps[0]["n_train"] == reps[1]["n_train"] and reps[0]["test"]["n"] == reps[1]["test"]["n"]
    md = (cmp_dir / "compare.md").read_text()
    assert "| speech-only | 1/1 |" in md and "speaker probe" in md
    rows = list(csv.DictReader(io.StringIO((cmp_dir / "compare.csv").read_text())))
    assert [r["model"] for r in rows] == ["speech-only", "concat"] and rows[0]["probe_acc_pct"]
    run_cfg = yaml.safe_load((cmp_dir / "runs" / "speech-only-seed0" / "config.yaml").read_text())
    assert run_cfg["model"]["name"] == "speech-only" and run_cfg["features"]["text"]["name"] == "minilm"

    # the single-model probe: one fold's checkpoint embeds every utterance (all 10 speakers)
    assert main(["probe", str(cmp_dir / "runs" / "concat-seed0"), "--single-model", "1"]) == 0
    single = json.loads((cmp_dir / "runs" / "concat-seed0" / "probe-2.json").read_text())
    assert single["mode"] == "single model (fold 1)"
    assert single["pooled"]["emotion"]["n_speakers"] == 10
    assert single["pooled"]["emotion"]["n_train"] + single["pooled"]["emotion"]["n_test"] == 120
    # every fold model: the same with each fold's checkpoint, the mean and the spread
    assert main(["probe", str(cmp_dir / "runs" / "concat-seed0"), "--single-model", "all"]) == 0
    every = json.loads((cmp_dir / "runs" / "concat-seed0" / "probe-3.json").read_text())
    e = every["pooled"]["emotion"]
    assert every["mode"] == "every fold model (2 models)" and set(e["models"]) == {"model of fold 1",
                                                                                  "model of fold 2"}
    assert e["models"]["model of fold 1"] == pytest.approx(single["pooled"]["emotion"]["accuracy"])
    assert e["accuracy"] == pytest.approx(sum(e["models"].values()) / 2) and e["accuracy_std"] >= 0

    # resume: finished runs are skipped (their results are not rewritten)
    before = (cmp_dir / "runs" / "concat-seed0" / "results.json").stat().st_mtime_ns
    assert main(["compare", "--resume", str(cmp_dir), "--quiet"]) == 0
    assert (cmp_dir / "runs" / "concat-seed0" / "results.json").stat().st_mtime_ns == before
    assert main(["compare", "--resume", str(cmp_dir), "--models", "misa"]) == 2
    assert "plan.json" in capsys.readouterr().err


def test_leave_one_speaker_out_probe_uses_every_fold_model(tmp_path, tiny_corpus, feature_cache):
    """Each test fold holds one speaker: the compare probe embeds the corpus with each fold's
    model (10-way identification) instead of pooling single-speaker test sets."""
    args = ["compare", "--config", "demo", "--models", "concat", "--folds", "Ses01_F,Ses01_M",
            "--probe", "--quiet", *tiny_overrides(tiny_corpus, feature_cache, tmp_path / "runs"),
            "train.epochs=2", "cv.protocol=speaker"]
    assert main(args) == 0
    (cmp_dir,) = list((tmp_path / "runs").iterdir())
    p = json.loads((cmp_dir / "compare.json").read_text())["models"][0]["probe"]
    assert p["mode"] == "every fold model (2 models)"
    assert p["n_speakers"] == 10 and p["chance"] == pytest.approx(0.1)
    assert p["accuracy_std"] is not None and p["fold_chance"] is None
    md = (cmp_dir / "compare.md").read_text()
    assert "each fold's model embeds the whole corpus" in md and " ± " in md.split("| concat |")[1]

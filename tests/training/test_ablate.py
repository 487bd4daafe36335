"""`fdrl ablate`: systems files, the summary's noise rule, an end-to-end 2-system x
2-fold ablation through the CLI, its resume, and `fdrl plot` on its runs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from fdrl.analysis.report import runs_from_ablation
from fdrl.cli import main
from fdrl.errors import ConfigError
from fdrl.training.ablate import ONE_SEED, make_plan, read_plan, summarize, system_config
from fdrl.training.systems import load_systems
from fdrl.utils.io import write_json
from tests.conftest import tiny_overrides

PAPER = {"S0": (78.34, 79.44), "S1": (76.47, 77.36), "S2": (77.39, 78.26), "S3": (77.51, 78.44),
         "S4": (77.15, 77.43), "S5": (76.69, 78.01), "S6": (77.71, 78.67)}


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- systems files ---------------------------------------------------------------------

def test_builtin_fdrl_systems_build_valid_configs():
    catalog = load_systems()
    plan = make_plan("demo", ["data.manifest=x"], catalog.for_model("fdrl"), 1)
    cfgs = {s.name: system_config(plan.base, s, 0) for s in plan.systems}
    base = system_config(plan.base, catalog.systems["S0"], 0)
    assert base.model == cfgs["S0"].model and base.model.use_global and base.model.use_local
    m = {k: c.model for k, c in cfgs.items()}
    assert not m["S1"].use_global and not m["S1"].use_local
    assert not m["S1"].use_modality_disc and not m["S1"].use_orthogonality
    assert not m["S2"].use_global and m["S2"].use_local
    assert m["S3"].use_global and not m["S3"].use_local
    assert not m["S4"].use_global and not m["S4"].use_local and m["S4"].use_orthogonality
    assert not m["S5"].use_modality_disc and not m["S5"].use_orthogonality and m["S5"].use_global
    assert not m["S6"].use_predictor
    assert m["shared-only"].fusion_tokens == "shared" and m["private-only"].fusion_tokens == "private"
    assert m["no-align-disparity"].alpha == 0.0 and m["no-align-disparity"].beta == 0.0
    assert m["mu0"].mu_fixed == 0.0
    for name, (war, uar) in PAPER.items():
        assert catalog.systems[name].paper == {"war": war, "uar": uar}
    assert [s.name for s in catalog.select(None, "fdrl")] == list(PAPER)  # default = Table 2
    assert cfgs["S2"].train.seed == 0 and system_config(plan.base, catalog.systems["S2"], 3).train.seed == 3


def test_user_systems_file_and_its_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("model: fdrl\nreference: base\nsystems:\n"
                    "  base: {description: my baseline}\n"
                    "  half-beta: {description: beta halved, overrides: {model.beta: 0.25}}\n")
    catalog = load_systems([good])
    picked = catalog.select("base,half-beta", "fdrl")
    assert [s.name for s in picked] == ["base", "half-beta"] and picked[1].reference == "base"
    plan = make_plan("demo", ["data.manifest=x"], picked, 2)
    assert plan.reference == "base" and plan.seeds == [0, 1]
    assert system_config(plan.base, picked[1], 1).model.beta == 0.25

    cases = {
        "model: fdrl\nsystems:\n  S0: {description: clash}\n": "already defined",
        "systems:\n  'a b': {description: x}\n": "letters, digits",
        "systems:\n  x: {overrides: {model.beta: 0}}\n": "'description' is required",
        "systems:\n  x: {description: d, overides: {}}\n": "did you mean 'overrides'",
        "systems:\n  x: {description: d, overrides: {beta: 0}}\n": "not a dotted config key",
        "reference: nope\nsystems:\n  x: {description: d}\n": "reference 'nope'",
    }
    for k, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{k}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_systems([path])
    with pytest.raises(ConfigError, match="unknown system 'S22'.*did you mean 'S2'"):
        load_systems().select("S0,S22", "fdrl")
    typo = tmp_path / "typo.yaml"
    typo.write_text("systems:\n  t: {description: d, overrides: {model.use_globl: false}}\n")
    t = load_systems([typo]).systems["t"]
    with pytest.raises(ConfigError, match=r"system 't' \(.*typo.yaml\).*did you mean 'use_global'"):
        make_plan("demo", ["data.manifest=x"], [t], 1)


# -- the summary's noise rule (no training) ----------------------------------------------

def _fake_results(run_dir, fold_values):
    (run_dir / "folds").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("{}\n")
    write_json(run_dir / "results.json", {"corpus": "fake", "classes": ["a", "b"], "folds": [
        {"test_group": str(g), "war": v, "uar": v - 0.01} for g, v in enumerate(fold_values, 1)]})


def test_summary_differences_and_seed_spread(tmp_path):
    catalog = load_systems()
    systems = [catalog.systems[n] for n in ("S0", "S1", "S2", "S3")]
    plan = make_plan("demo", ["data.manifest=x"], systems, 3)
    abl = tmp_path / "abl"
    abl.mkdir()
    write_json(abl / "plan.json", plan.to_dict())
    per_seed = {"S0": [0.60, 0.61, 0.59],   # seed means; s = 0.01
                "S1": [0.50, 0.51, 0.49],   # -10 points: beyond sqrt(2) * 1 point
                "S2": [0.605, 0.595, 0.60],  # ~0: within noise
                "S3": [0.70]}               # one seed finished of three
    for name, means in per_seed.items():
        for seed, m in enumerate(means):
            _fake_results(abl / "runs" / f"{name}-seed{seed}", [m - 0.02, m + 0.02])
    summary = summarize(abl)
    rows = {r["system"]: r for r in _csv(abl / "ablation.csv")}
    assert list(rows) == ["S0", "S1", "S2", "S3"]
    assert float(rows["S0"]["war_seed_std_pct"]) == pytest.approx(1.0)
    assert float(rows["S1"]["war_diff_pts"]) == pytest.approx(-10.0)
    assert float(rows["S1"]["war_noise_pts"]) == pytest.approx(2 ** 0.5, abs=1e-3)
    assert rows["S1"]["war_verdict"] == "beyond seed spread"
    assert rows["S2"]["war_verdict"] == "within noise"
    assert rows["S3"]["war_verdict"] == ONE_SEED and rows["S3"]["seeds_done"] == "1"
    assert rows["S0"]["war_verdict"] == "" and rows["S0"]["war_diff_pts"] == ""
    # mean and std over folds x seeds: S0 values 0.58..0.63
    assert float(rows["S0"]["war_mean_pct"]) == pytest.approx(60.0)
    assert float(rows["S0"]["uar_mean_pct"]) == pytest.approx(59.0)
    assert float(rows["S1"]["paper_war_diff_pts"]) == pytest.approx(76.47 - 78.34)
    s3 = next(r for r in summary["systems"] if r["system"] == "S3")
    assert [r["status"] for r in s3["runs"]] == ["done", "pending", "pending"]
    md = (abl / "ablation.md").read_text()
    assert "| S3 |" in md and "1/3" in md and "beyond seed spread" in md


# -- end to end through the CLI ------------------------------------------------------------

@pytest.fixture(scope="module")
def ablation(tmp_path_factory, tiny_corpus, feature_cache):
    out = tmp_path_factory.mktemp("ablate")
    code = main(["ablate", "--config", "demo", "--systems", "S0,S1", "--folds", "1,2", "--quiet",
                 *tiny_overrides(tiny_corpus, feature_cache, out, **{"train.epochs": 2})])
    assert code == 0
    (abl,) = out.iterdir()
    return abl


def test_ablation_outputs(ablation, capsys):
    assert ablation.name.startswith("ablation-tiny-")
    runs = sorted(p.name for p in (ablation / "runs").iterdir())
    assert runs == ["S0-seed0", "S1-seed0"]
    for name in runs:
        res = json.loads((ablation / "runs" / name / "results.json").read_text())
        assert [f["test_group"] for f in res["folds"]] == ["1", "2"]
    s1_cfg = (ablation / "runs" / "S1-seed0" / "config.yaml").read_text()
    assert "use_global: false" in s1_cfg and "use_orthogonality: false" in s1_cfg

    rows = _csv(ablation / "ablation.csv")
    assert [r["system"] for r in rows] == ["S0", "S1"]
    s0, s1 = rows
    assert float(s1["war_diff_pts"]) == pytest.approx(
        float(s1["war_mean_pct"]) - float(s0["war_mean_pct"]), abs=1e-3)
    assert s1["war_verdict"] == ONE_SEED and s1["seeds_done"] == "1" and s1["n_values"] == "2"
    assert (float(s0["paper_war_pct"]), float(s1["paper_uar_pct"])) == (78.34, 77.36)
    assert s1["paper_setting"] == "IEMOCAP, wav2vec2+BERT fine-tuned"

    md = (ablation / "ablation.md").read_text()
    for text in ("| S0 |", "| S1 |", "ΔWAR vs S0", "ΔUAR vs S0",
                 "paper WAR (IEMOCAP, wav2vec2+BERT fine-tuned)", "78.34", ONE_SEED):
        assert text in md, text
    summary = json.loads((ablation / "ablation.json").read_text())
    assert summary["reference"] == "S0" and summary["folds"] == [1, 2] and summary["seeds"] == [0]
    assert [r["system"] for r in summary["systems"]] == ["S0", "S1"]
    assert summary["systems"][1]["overrides"]["model.use_global"] is False
    assert len(summary["systems"][0]["runs"][0]["war"]) == 2
    assert read_plan(ablation).reference == "S0"


def test_resume_skips_finished_runs_and_finishes_the_rest(ablation, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(ablation, killed)
    s0 = killed / "runs" / "S0-seed0" / "results.json"
    s1 = killed / "runs" / "S1-seed0"
    before = s0.stat().st_mtime_ns
    # S1 was killed during its second fold: fold 2 and the run summary are missing
    shutil.rmtree(s1 / "folds" / "2")
    (s1 / "results.json").unlink()
    (s1 / "results.md").unlink()
    (killed / "ablation.md").unlink()
    assert main(["ablate", "--resume", str(killed), "--quiet"]) == 0
    assert s0.stat().st_mtime_ns == before  # finished: not run again
    assert (s1 / "folds" / "2" / "metrics.json").is_file()
    original = _csv(ablation / "ablation.csv")
    resumed = _csv(killed / "ablation.csv")
    assert [r["war_mean_pct"] for r in resumed] == [r["war_mean_pct"] for r in original]
    assert "| S1 |" in (killed / "ablation.md").read_text()

    # everything done: a resume only rewrites the summary
    assert main(["ablate", "--resume", str(killed), "--quiet"]) == 0
    assert s0.stat().st_mtime_ns == before


def test_ablate_argument_errors(tmp_path, tiny_corpus, feature_cache, capsys):
    over = tiny_overrides(tiny_corpus, feature_cache, tmp_path / "out")
    assert main(["ablate", "--config", "demo", "--systems", "S0,S9", *over]) == 2
    assert "unknown system 'S9'" in capsys.readouterr().err
    assert main(["ablate", "--resume", str(tmp_path), "--systems", "S0"]) == 2
    assert "--resume takes everything" in capsys.readouterr().err
    assert main(["ablate", "--resume", str(tmp_path)]) == 2
    assert "not an ablation folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_plot_on_ablation_runs(ablation, tmp_path, capsys):
    run, s1 = ablation / "runs" / "S0-seed0", ablation / "runs" / "S1-seed0"
    out = tmp_path / "figs"
    assert main(["plot", str(run), "--compare", str(s1), "--mu0", str(s1), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    for name in ("fig3a_tsne", "fig3b_centroids", "confusion", "learning_curves"):
        for ext in ("png", "csv"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    for name in ("report.md", "measures.json", "fig3b_centroids.npz"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "![Figure 3a" in report and "| **mean ± std** |" in report and "S1-seed0" in report
    measures = json.loads((out / "measures.json").read_text())
    assert 0.0 <= measures["run"]["mean"]["modality_acc_S"]["mean"] <= 1.0
    # an ablation folder picks its own runs: the reference, S1 as compare, no mu0 here
    picked = runs_from_ablation(ablation)
    assert picked == {"run_dir": run, "compare": s1, "mu0": None}


def test_foalnet_systems_on_the_demo_config_by_switching_the_model():
    """model.name=foalnet on demo.yaml (an FDRL config) plans the Foal-Net ablation."""
    from fdrl.training.ablate import make_plan
    from fdrl.training.systems import load_systems

    systems = load_systems().select(["foal-baseline", "foal-full"], "foalnet")
    plan = make_plan("demo", ["model.name=foalnet", "data.manifest=somewhere"], systems, 1)
    assert [s.name for s in plan.systems] == ["foal-baseline", "foal-full"]
    assert plan.base["model"] == {"name": "foalnet", "d": 64, "dropout": 0.2}

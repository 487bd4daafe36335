"""Ablations: every system through the same cross-validation, several seeds each,
one table comparing each system with the reference (paper Table 2).

Layout of an ablation folder (``<run.out_dir>/ablation-<run.name>-<time>/``)::

    plan.json                 base config, systems (with their overrides), seeds: what to run
    runs/<system>-seed<k>/    an ordinary run folder (see fdrl.training.cv), one per (system, seed)
    ablation.md, .csv, .json  the summary, rewritten after every finished run

A system's configuration is the base config (the YAML file plus the command line's
overrides), then the system's overrides, then ``train.seed = base seed + k``: the
system wins where both set a key. Features are read once per distinct
``data`` + ``features`` section and shared between systems.

Resuming (:func:`run_ablation` on an existing folder) skips finished runs (their
``results.json`` exists), resumes started ones with ``run_cv(resume=True)`` and
starts the rest; the plan is read from ``plan.json``, so editing the systems files
later does not change a started ablation.

Seed spread. For each system, ``s`` is the standard deviation over seeds (ddof=1)
of the per-seed mean over folds. A difference ``d`` to the reference counts as
beyond noise when ``|d| > sqrt(s_ref^2 + s^2)``, the spread of the difference of
one seed of each: a deliberately conservative rule of thumb, not a significance
test. With one seed ``s`` is undefined and the verdict is "n/a (1 seed)".
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdrl.config import Config, apply_overrides, from_dict, load_yaml, resolve_config_path, switch_model
from fdrl.errors import ConfigError, RunError
from fdrl.training.runs import environment, new_run_dir
from fdrl.training.systems import System
from fdrl.utils.io import read_json, write_json, write_text

log = logging.getLogger(__name__)

PLAN = "plan.json"
METRICS = ("war", "uar")
ONE_SEED = "n/a (1 seed)"
BEYOND = "beyond seed spread"
WITHIN = "within noise"


@dataclass
class Plan:
    """What an ablation runs: base config dict, systems, seeds, reference."""

    base: dict                 # config after the command line's overrides, before the systems'
    systems: list[System]
    seeds: list[int]           # train.seed values
    reference: str | None      # name of the system the others are compared with
    source: str = ""           # the config name or file the base came from
    cli_overrides: list | None = None  # the command line's overrides, for the record

    def to_dict(self) -> dict:
        return {"base": self.base, "systems": [s.to_dict() for s in self.systems],
                "seeds": self.seeds, "reference": self.reference, "source": self.source,
                "cli_overrides": self.cli_overrides or []}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(base=data["base"], systems=[System.from_dict(s) for s in data["systems"]],
                   seeds=[int(s) for s in data["seeds"]], reference=data.get("reference"),
                   source=data.get("source", ""), cli_overrides=data.get("cli_overrides"))


def run_name(system: str, seed: int) -> str:
    return f"{system}-seed{seed}"


def system_config(base: dict, system: System, seed: int) -> Config:
    """The validated configuration of ``system`` with ``train.seed = seed``."""
    data = apply_overrides(base, system.overrides)
    data = apply_overrides(data, {"train.seed": seed, "run.name": run_name(system.name, seed)})
    try:
        return from_dict(data)
    except ConfigError as exc:
        where = f" ({system.source})" if system.source else ""
        raise ConfigError(f"system '{system.name}'{where}: {exc}") from None


def base_config(config: str, overrides: list[str] | None = None) -> tuple[dict, Config]:
    """The base config dict (YAML + command-line overrides) and its validated form."""
    data = load_yaml(resolve_config_path(config))
    data = apply_overrides(switch_model(data, overrides), overrides or [])
    return data, from_dict(data)


def make_plan(config: str, overrides: list[str] | None, systems: list[System], n_seeds: int,
              reference: str | None = None) -> Plan:
    """Check every system's config up front (a typo fails before any training)."""
    if n_seeds < 1:
        raise ConfigError(f"--seeds: expected at least 1, got {n_seeds}")
    if not systems:
        raise ConfigError("no systems to run")
    base, cfg = base_config(config, overrides)
    seeds = [cfg.train.seed + k for k in range(n_seeds)]
    cli_keys = {k.split("=", 1)[0].strip() for k in overrides or []}
    for s in systems:
        system_config(base, s, seeds[0])
        for key in sorted(cli_keys & set(s.overrides)):
            log.warning("system %s sets %s itself: the command-line value is not used for it",
                        s.name, key)
    names = [s.name for s in systems]
    if reference is None:
        refs = [s.reference for s in systems if s.reference]
        reference = refs[0] if refs else None
    if reference is not None and reference not in names:
        log.warning("reference system %s is not among %s: no differences will be reported "
                    "(add it to --systems)", reference, ", ".join(names))
    return Plan(base=base, systems=systems, seeds=seeds, reference=reference, source=config,
                cli_overrides=list(overrides or []))


def start_ablation(plan: Plan, out_dir: str | Path | None = None) -> Path:
    """Create ``<out_dir>/ablation-<run.name>-<time>/`` and write the plan into it."""
    cfg = from_dict(plan.base)
    abl_dir = new_run_dir(out_dir or cfg.run.out_dir, f"ablation-{cfg.run.name}")
    write_json(abl_dir / PLAN, {**plan.to_dict(), "environment": environment()})
    return abl_dir


def read_plan(abl_dir: Path) -> Plan:
    path = Path(abl_dir) / PLAN
    if not path.is_file():
        raise RunError(f"{abl_dir}: not an ablation folder ({PLAN} missing)")
    try:
        return Plan.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: unreadable plan ({exc})") from None


def run_status(run_dir: Path) -> str:
    """``done`` (results.json), ``started`` (config.yaml) or ``new`` (absent or empty)."""
    if (run_dir / "results.json").is_file():
        return "done"
    if (run_dir / "config.yaml").is_file():
        return "started"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir}: folder has files but no config.yaml; it is not a run "
                       f"this ablation started (move it away to rerun it)")
    return "new"


def _prep_key(cfg: Config) -> str:
    """Features depend on the data and features sections only."""
    d = cfg.to_dict()
    return json.dumps({"data": d["data"], "features": d["features"]}, sort_keys=True)


def run_ablation(abl_dir: str | Path, progress: bool = True) -> dict:
    """Run (or continue) every (system, seed) of the plan; returns the summary."""
    from fdrl.training.cv import prepare, run_cv

    abl_dir = Path(abl_dir)
    plan = read_plan(abl_dir)
    # seed-major: after the first pass every system has one seed, so a stopped ablation
    # already gives a complete (if noisier) table
    jobs = [(s, seed) for seed in plan.seeds for s in plan.systems]
    preps: dict[str, object] = {}
    for k, (system, seed) in enumerate(jobs, 1):
        run_dir = abl_dir / "runs" / run_name(system.name, seed)
        status = run_status(run_dir)
        tag = f"[{k}/{len(jobs)}] {system.name} seed {seed}"
        if status == "done":
            log.info("%s: done, skipped", tag)
            continue
        cfg = system_config(plan.base, system, seed)
        key = _prep_key(cfg)
        if key not in preps:
            preps[key] = prepare(cfg, progress=progress)
        log.info("%s: %s (%s)", tag, "resuming" if status == "started" else "running",
                 system.description)
        if status == "started":
            run_cv(None, run_dir, resume=True, progress=progress, prep=preps[key])
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            run_cv(cfg, run_dir=run_dir, progress=progress, prep=preps[key])
        summarize(abl_dir, plan)
    return summarize(abl_dir, plan)


# -- summary ---------------------------------------------------------------------------

def _pts(x: float | None) -> float | None:
    """Fraction -> percentage points, rounded for the tables."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(100 * x, 4)


def _stats(per_seed: list[list[float]]) -> dict:
    """Mean and std (ddof=0) over all folds x seeds; seed_std: std (ddof=1) of per-seed means."""
    values = [v for fold_values in per_seed for v in fold_values]
    if not values:
        return {"mean": None, "std": None, "seed_std": None, "n_values": 0, "n_seeds": 0}
    seed_means = [float(np.mean(v)) for v in per_seed if v]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "seed_std": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None,
            "n_values": len(values), "n_seeds": len(seed_means)}


def _verdict(diff: float, s_ref: float | None, s: float | None) -> tuple[str, float | None]:
    if s_ref is None or s is None:
        return ONE_SEED, None
    noise = math.sqrt(s_ref ** 2 + s ** 2)
    return (BEYOND if abs(diff) > noise else WITHIN), noise


def _read_run(run_dir: Path) -> dict | None:
    if not (run_dir / "results.json").is_file():
        return None
    res = read_json(run_dir / "results.json")
    return {m: [f[m] for f in res["folds"]] for m in METRICS} | {
        "test_groups": [f["test_group"] for f in res["folds"]], "corpus": res.get("corpus"),
        "classes": res.get("classes")}


def summarize(abl_dir: str | Path, plan: Plan | None = None) -> dict:
    """Write ablation.json / .csv / .md from the finished runs; return the summary dict."""
    abl_dir = Path(abl_dir)
    plan = plan or read_plan(abl_dir)
    rows, corpus = [], None
    for s in plan.systems:
        runs = []
        for seed in plan.seeds:
            rd = abl_dir / "runs" / run_name(s.name, seed)
            r = _read_run(rd)
            runs.append({"seed": seed, "run_dir": str(rd.relative_to(abl_dir)),
                         "status": "done" if r else ("started" if (rd / "config.yaml").is_file()
                                                     else "pending"),
                         **({m: r[m] for m in METRICS} | {"test_groups": r["test_groups"]} if r else {})})
            corpus = corpus or (r or {}).get("corpus")
        done = [r for r in runs if r["status"] == "done"]
        rows.append({"system": s.name, "description": s.description, "overrides": s.overrides,
                     "paper": s.paper, "paper_setting": s.paper_setting, "source": s.source,
                     "runs": runs, "seeds_done": len(done), "seeds_planned": len(plan.seeds),
                     **{m: _stats([r[m] for r in done]) for m in METRICS}})
    ref = next((r for r in rows if r["system"] == plan.reference), None)
    for r in rows:
        r["diff"] = {}
        for m in METRICS:
            if ref is None or r is ref or r[m]["mean"] is None or ref[m]["mean"] is None:
                r["diff"][m] = None
                continue
            d = r[m]["mean"] - ref[m]["mean"]
            verdict, noise = _verdict(d, ref[m]["seed_std"], r[m]["seed_std"])
            r["diff"][m] = {"value": d, "noise": noise, "verdict": verdict}
        r["paper_diff"] = {m: (r["paper"][m] - ref["paper"][m])
                           if ref and r is not ref and r["paper"] and ref["paper"]
                           and r["paper"].get(m) is not None and ref["paper"].get(m) is not None
                           else None for m in METRICS}
    cfg = from_dict(plan.base)
    summary = {
        "ablation_dir": str(abl_dir), "config": plan.source, "cli_overrides": plan.cli_overrides,
        "model": cfg.model_name, "corpus": corpus, "protocol": cfg.cv.protocol,
        "folds": cfg.cv.folds, "seeds": plan.seeds, "reference": plan.reference,
        "noise_rule": "|diff| > sqrt(s_ref^2 + s^2), s = std over seeds (ddof=1) of the "
                      "per-seed mean over folds",
        "systems": rows, "plan": plan.to_dict(),
    }
    write_json(abl_dir / "ablation.json", summary)
    write_text(abl_dir / "ablation.csv", ablation_csv(summary))
    write_text(abl_dir / "ablation.md", ablation_markdown(summary))
    return summary


def _paper_setting(summary: dict) -> str:
    settings = sorted({r["paper_setting"] for r in summary["systems"] if r.get("paper_setting")})
    return "; ".join(settings) or "as reported"


CSV_COLUMNS = (
    "system", "description", "overrides", "seeds_done", "seeds_planned", "n_values",
    "war_mean_pct", "war_std_pct", "war_seed_std_pct", "uar_mean_pct", "uar_std_pct",
    "uar_seed_std_pct", "reference", "war_diff_pts", "war_noise_pts", "war_verdict",
    "uar_diff_pts", "uar_noise_pts", "uar_verdict", "paper_setting", "paper_row",
    "paper_war_pct", "paper_uar_pct", "paper_war_diff_pts", "paper_uar_diff_pts",
)


def ablation_csv(summary: dict) -> str:
    """One row per system; percentages and percentage points (differences)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in summary["systems"]:
        paper = r["paper"] or {}
        row = {"system": r["system"], "description": r["description"],
               "overrides": json.dumps(r["overrides"], sort_keys=True),
               "seeds_done": r["seeds_done"], "seeds_planned": r["seeds_planned"],
               "n_values": r["war"]["n_values"], "reference": summary["reference"] or "",
               "paper_setting": r.get("paper_setting") or "",
               "paper_row": (paper.get("row") or r["system"]) if paper else "",
               "paper_war_pct": paper.get("war", ""), "paper_uar_pct": paper.get("uar", "")}
        for m in METRICS:
            st, d = r[m], r["diff"][m]
            row[f"{m}_mean_pct"] = _pts(st["mean"])
            row[f"{m}_std_pct"] = _pts(st["std"])
            row[f"{m}_seed_std_pct"] = _pts(st["seed_std"])
            row[f"{m}_diff_pts"] = _pts(d["value"]) if d else ""
            row[f"{m}_noise_pts"] = _pts(d["noise"]) if d else ""
            row[f"{m}_verdict"] = d["verdict"] if d else ""
            pd = r["paper_diff"][m]
            row[f"paper_{m}_diff_pts"] = round(pd, 2) if pd is not None else ""
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _fmt(st: dict) -> str:
    if st["mean"] is None:
        return "—"
    return f"{100 * st['mean']:.2f} ± {100 * st['std']:.2f}"


def _fmt_diff(d: dict | None) -> str:
    return "—" if d is None else f"{100 * d['value']:+.2f}"


def _fmt_verdict(r: dict) -> str:
    verdicts = [r["diff"][m]["verdict"] if r["diff"][m] else None for m in METRICS]
    if verdicts[0] is None and verdicts[1] is None:
        return "—"
    if verdicts[0] == verdicts[1]:
        return verdicts[0]
    return " / ".join(v or "—" for v in verdicts)


def _fmt_paper(r: dict, m: str) -> str:
    paper = r["paper"] or {}
    if paper.get(m) is None:
        return "—"
    text = f"{paper[m]:.2f}"
    if r["paper_diff"][m] is not None:
        text += f" ({r['paper_diff'][m]:+.2f})"
    if paper.get("row") and paper["row"] != r["system"]:
        text += f" [row {paper['row']}]"
    return text


def ablation_markdown(summary: dict) -> str:
    ref = summary["reference"] or "—"
    seeds = summary["seeds"]
    folds = summary["folds"] or "all"
    setting = _paper_setting(summary)
    lines = [
        f"# Ablation: {summary['model']} on {summary['corpus']}", "",
        f"Config `{summary['config']}`"
        + (f" with `{' '.join(summary['cli_overrides'])}`" if summary["cli_overrides"] else "")
        + f"; protocol {summary['protocol']}, folds {folds}; seeds {', '.join(map(str, seeds))}.",
        "",
        f"WAR / UAR: mean ± std over folds × seeds (%). Δ: difference to {ref} in percentage "
        f"points. A Δ is *beyond seed spread* when |Δ| > sqrt(s_{ref}² + s²), s = the standard "
        f"deviation over seeds of the per-seed mean over folds; otherwise *within noise* "
        f"(with one seed: n/a). This is a rule of thumb, not a significance test.",
        "",
        f"Paper columns: the paper's Table 2 ({setting}), with its own Δ to {ref} in "
        f"parentheses. Absolute numbers are not comparable with ours (other features, "
        f"corpus or training); compare the direction and size of the Δs.",
        "",
        f"| system | what changes | seeds | WAR | UAR | ΔWAR vs {ref} | ΔUAR vs {ref} "
        f"| Δ vs seed spread (WAR / UAR) | paper WAR ({setting}) | paper UAR ({setting}) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["systems"]:
        lines.append(
            f"| {r['system']} | {r['description']} | {r['seeds_done']}/{r['seeds_planned']} | "
            f"{_fmt(r['war'])} | {_fmt(r['uar'])} | {_fmt_diff(r['diff']['war'])} | "
            f"{_fmt_diff(r['diff']['uar'])} | {_fmt_verdict(r)} | {_fmt_paper(r, 'war')} | "
            f"{_fmt_paper(r, 'uar')} |")
    lines += ["", "## Runs", "", "| system | seed | status | run folder | WAR per fold | UAR per fold |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in summary["systems"]:
        for run in r["runs"]:
            per = {m: ", ".join(f"{100 * v:.1f}" for v in run.get(m, [])) or "—" for m in METRICS}
            lines.append(f"| {r['system']} | {run['seed']} | {run['status']} | `{run['run_dir']}` "
                         f"| {per['war']} | {per['uar']} |")
    lines += ["", "## Overrides", ""]
    for r in summary["systems"]:
        ov = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in r["overrides"].items()) or "none"
        lines.append(f"- **{r['system']}**: {ov}")
    return "\n".join(lines) + "\n"


def format_table(summary: dict) -> str:
    """Plain-text table for the terminal."""
    ref = summary["reference"] or "-"
    out = [f"{'system':<20} {'seeds':>5}  {'WAR %':>14}  {'UAR %':>14}  {'dWAR vs ' + ref:>12}  "
           f"{'dUAR vs ' + ref:>12}  {'paper WAR/UAR':>13}"]
    for r in summary["systems"]:
        d = {m: (f"{100 * r['diff'][m]['value']:+.2f}" + ("*" if r["diff"][m]["verdict"] == BEYOND else "")
                 if r["diff"][m] else "-") for m in METRICS}
        p = r["paper"] or {}
        paper = f"{p['war']:.2f}/{p['uar']:.2f}" if p.get("war") is not None else "-"
        out.append(f"{r['system']:<20} {r['seeds_done']:>2}/{r['seeds_planned']:<2}  "
                   f"{_fmt(r['war']):>14}  {_fmt(r['uar']):>14}  {d['war']:>12}  {d['uar']:>12}  "
                   f"{paper:>13}")
    out.append("* = difference beyond the seed-to-seed spread")
    return "\n".join(out)

"""Model comparisons: several models through the same cross-validation, on the same
folds and the same features, one table (optionally with speaker probes).

Layout of a comparison folder (``<run.out_dir>/compare-<run.name>-<time>/``)::

    plan.json                the base config, each model's model section, seeds: what to run
    runs/<model>-seed<k>/    an ordinary run folder (see fdrl.training.cv), one per (model, seed);
                             with probes also its probe.json / probe.md (fdrl.analysis.probe)
    timing.json              wall seconds of each run trained by this comparison
    compare.md, .csv, .json  the summary, rewritten after every finished run

Each model's configuration, from weakest to strongest:

1. the YAML file and the command line's section overrides (``data.*``, ``features.*``,
   ``train.*``, ``cv.*``, ``run.*``), the same for every model;
2. the YAML's ``model:`` section: all of it for the model it names; its other keys
   (``d``, ``hidden``, ``dropout``...) also for every compared model whose config has
   a field of that name, so widths are shared where they mean the same thing;
3. ``compare: {models: {<label>: {key: value}}}`` in the YAML (the only extra
   top-level key a comparison file may have; ``compare: {default_models: [...]}``
   gives the models when ``--models`` is not passed);
4. ``model.KEY=VALUE`` on the command line: every model whose config has KEY (an error
   when none has);
5. ``<label>.KEY=VALUE`` on the command line: that entry only.

Then ``train.seed = base seed + k`` and ``run.name = <label>-seed<k>``.

An entry of ``--models`` is a registry name (its label is the name) or
``label=name``, so one model can appear in several variants, e.g. the identity
techniques: ``--models multitask,adv=multitask,orth=multitask
adv.identity.method=adversarial orth.identity.method=orthogonality``.

Same data for every model: one :func:`~fdrl.training.cv.prepare` (the base's data and
features sections) is passed to every :func:`~fdrl.training.cv.run_cv`. Unimodal
models (``speech-only``, ``text-only``) receive both modalities and read only their
own, so the features are identical across the table.

Resuming (:func:`run_compare` on an existing folder) skips finished runs (their
``results.json`` exists), resumes started ones and starts the rest, from ``plan.json``.

Probes (``probe=True``): the pooled speaker-identification probe of
:mod:`fdrl.analysis.probe` on each run's emotion embedding (``emotion``, or FDRL's
``fused``), with chance and majority rates; with a ``reference`` model (default
``multitask`` when compared), disentanglement % = relative drop of probe accuracy
versus the reference's.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fdrl.config import (SECTIONS, Config, apply_overrides, from_dict, load_yaml, parse_override,
                         resolve_config_path)
from fdrl.errors import ConfigError, RunError
from fdrl.models import registry
from fdrl.training.ablate import run_name, run_status
from fdrl.training.runs import environment, new_run_dir
from fdrl.utils.io import read_json, write_json, write_text

log = logging.getLogger(__name__)

PLAN = "plan.json"
LABEL_RE = re.compile(r"^[A-Za-z0-9_+-]+$")  # names a run folder; no '.' (<label>.KEY overrides)
TIMING = "timing.json"
METRICS = ("war", "uar", "macro_f1")


@dataclass
class ComparePlan:
    """What a comparison runs."""

    base: dict                          # config without the model section (overrides applied)
    models: list[str]                   # labels, in table order
    sections: dict[str, dict]           # label -> its model section (without name)
    seeds: list[int]                    # train.seed values
    probe: bool = False                 # speaker probes on the emotion embeddings
    reference: str | None = None        # model the probe's disentanglement % refers to
    source: str = ""                    # the config name or file
    cli_overrides: list = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # label -> registry name (default: label)

    def name(self, label: str) -> str:
        """The registry name of a label."""
        return self.names.get(label, label)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ComparePlan":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ----------------------------------------------------------------------------------
# Configurations


def _fields(model: str) -> set[str]:
    return {f.name for f in dataclasses.fields(registry.get(model).config_cls)}


def _split_overrides(overrides: list[str], models: list[str]
                     ) -> tuple[dict, dict, dict[str, dict]]:
    """Command-line overrides -> (section overrides, model.* overrides, per-model)."""
    general, every, per_model = {}, {}, {m: {} for m in models}
    for text in overrides:
        path, value = parse_override(text)
        head, rest = path[0], ".".join(path[1:])
        if head in SECTIONS:
            general[".".join(path)] = value
        elif head == "model" and rest:
            if rest == "name":
                raise ConfigError(f"override '{text}': a comparison picks models with --models, "
                                  f"not model.name")
            every[rest] = value
        elif head in per_model and rest:
            per_model[head][rest] = value
        else:
            raise ConfigError(
                f"override '{text}': expected a section key ({', '.join(SECTIONS)}), model.KEY "
                f"(every model that has KEY) or <model>.KEY with <model> one of {models}")
    return general, every, per_model


def parse_models(entries: list[str]) -> tuple[list[str], dict[str, str]]:
    """``["concat", "adv=multitask"]`` -> labels ``["concat", "adv"]`` and
    ``{"concat": "concat", "adv": "multitask"}``; unknown names and bad or repeated
    labels are ConfigErrors."""
    labels, names = [], {}
    for entry in entries:
        label, _, name = entry.partition("=") if "=" in entry else (entry, "", entry)
        label, name = label.strip(), name.strip()
        if not LABEL_RE.match(label) or label in SECTIONS or label == "model":
            raise ConfigError(f"--models: label '{label}' must use letters, digits and _ + - "
                              f"only (no '.': overrides read <label>.KEY) and not be a config "
                              f"section name")
        if label in names:
            raise ConfigError(f"--models: '{label}' appears twice; give variants their own "
                              f"label (label=model)")
        registry.get(name)  # ConfigError with a suggestion for an unknown name
        labels.append(label)
        names[label] = name
    return labels, names


def make_plan(config: str, models: list[str] | None, overrides: list[str] | None = None,
              n_seeds: int = 1, probe: bool = False, reference: str | None = None) -> ComparePlan:
    """Resolve every model's configuration and check it (a typo fails before training).

    ``models``: registry names or ``label=name`` entries (see the module docstring).
    """
    data = load_yaml(resolve_config_path(config))
    extra = data.pop("compare", None) or {}
    if not isinstance(extra, dict) or set(extra) - {"models", "default_models"}:
        raise ConfigError(f"{config}: 'compare' expects a mapping with 'models' "
                          f"({{label: {{key: value}}}}) and/or 'default_models' ([names])")
    entries = [str(m) for m in (models or extra.get("default_models") or [])]
    if not entries:
        raise ConfigError("--models: give at least one model, e.g. --models fdrl,foalnet,concat "
                          f"(known: {', '.join(registry.names())})")
    models, reg = parse_models(entries)
    if n_seeds < 1:
        raise ConfigError(f"--seeds: expected at least 1, got {n_seeds}")
    general, every, per_model = _split_overrides(list(overrides or []), models)
    base_model = dict(data.pop("model", None) or {})
    base_name = str(base_model.pop("name", "fdrl"))
    base = apply_overrides(data, general)
    yaml_sections = extra.get("models") or {}
    unknown = [m for m in yaml_sections if m not in models]
    if unknown:
        log.warning("%s: compare.models has sections for %s, which are not compared",
                    config, unknown)
    sections: dict[str, dict] = {}
    for key in every:
        if not any(key.split(".")[0] in _fields(reg[m]) for m in models):
            raise ConfigError(f"override 'model.{key}': none of the compared models {models} "
                              f"has a field '{key.split('.')[0]}'")
    for m in models:
        names = _fields(reg[m])
        sec = (dict(base_model) if reg[m] == base_name
               else {k: v for k, v in base_model.items() if k in names})
        sec = apply_overrides(sec, yaml_sections.get(m) or {})
        sec = apply_overrides(sec, {k: v for k, v in every.items() if k.split(".")[0] in names})
        sections[m] = apply_overrides(sec, per_model[m])
    base_seed = from_dict(base).train.seed
    plan = ComparePlan(base=base, models=models, sections=sections,
                       seeds=[base_seed + k for k in range(n_seeds)], probe=probe,
                       reference=reference if reference is not None
                       else ("multitask" if probe and "multitask" in models else None),
                       source=config, cli_overrides=list(overrides or []), names=reg)
    if plan.reference is not None and plan.reference not in models:
        raise ConfigError(f"--reference: '{plan.reference}' is not among the compared models {models}")
    for m in models:
        model_config(plan, m, plan.seeds[0])
    return plan


def model_config(plan: ComparePlan, model: str, seed: int) -> Config:
    """The validated configuration of ``model`` with ``train.seed = seed``."""
    data = copy.deepcopy(plan.base)
    data["model"] = {"name": plan.name(model), **copy.deepcopy(plan.sections[model])}
    data = apply_overrides(data, {"train.seed": seed, "run.name": run_name(model, seed)})
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"model '{model}': {exc}") from None


# ----------------------------------------------------------------------------------
# Running


def start_compare(plan: ComparePlan, out_dir: str | Path | None = None) -> Path:
    """Create ``<out_dir>/compare-<run.name>-<time>/`` and write the plan into it."""
    cfg = from_dict(plan.base)
    cmp_dir = new_run_dir(out_dir or cfg.run.out_dir, f"compare-{cfg.run.name}")
    write_json(cmp_dir / PLAN, {**plan.to_dict(), "environment": environment()})
    return cmp_dir


def read_plan(cmp_dir: str | Path) -> ComparePlan:
    path = Path(cmp_dir) / PLAN
    if not path.is_file():
        raise RunError(f"{cmp_dir}: not a comparison folder ({PLAN} missing)")
    try:
        return ComparePlan.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{path}: unreadable plan ({exc})") from None


def run_compare(cmp_dir: str | Path, progress: bool = True) -> dict:
    """Run (or continue) every (model, seed) of the plan; returns the summary."""
    from fdrl.training.cv import prepare, run_cv

    cmp_dir = Path(cmp_dir)
    plan = read_plan(cmp_dir)
    jobs = [(m, seed) for m in plan.models for seed in plan.seeds]
    prep = None
    timing = read_json(cmp_dir / TIMING) if (cmp_dir / TIMING).is_file() else {}
    for k, (model, seed) in enumerate(jobs, 1):
        name = run_name(model, seed)
        run_dir = cmp_dir / "runs" / name
        status = run_status(run_dir)
        tag = f"[{k}/{len(jobs)}] {model} seed {seed}"
        if status == "done":
            log.info("%s: done, skipped", tag)
            continue
        cfg = model_config(plan, model, seed)
        if prep is None:  # one prepared data set for every model: same features, same folds
            prep = prepare(cfg, progress=progress)
        log.info("%s: %s", tag, "resuming" if status == "started" else "running")
        t0 = time.time()
        if status == "started":
            run_cv(None, run_dir, resume=True, progress=progress, prep=prep)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            run_cv(cfg, run_dir=run_dir, progress=progress, prep=prep)
        timing[name] = timing.get(name, 0.0) + (time.time() - t0)
        write_json(cmp_dir / TIMING, timing)
        summarize(cmp_dir, plan)
    return summarize(cmp_dir, plan)


# ----------------------------------------------------------------------------------
# Probes


def run_probe(run_dir: Path) -> dict | None:
    """The run's speaker probe on its emotion embedding, cached in ``run_dir/probe.json``
    (computed once; None when no embedding is stored).

    Pooled over the folds' test sets, except when every test fold holds a single speaker
    (leave-one-speaker-out): then the pooled probe would recognise the fold model, so
    each fold's checkpoint embeds the whole corpus and the probe accuracy is the mean
    over the fold models (:func:`fdrl.analysis.probe.probe_run`, ``single_model="all"``).
    """
    from fdrl.analysis.probe import (
        ProbeSettings, emotion_key, load_fold_reps, probe_markdown, probe_run, single_speaker_folds)

    folds = load_fold_reps(run_dir)
    every = single_speaker_folds(folds)
    mode = "every" if every else "pooled"
    settings = ProbeSettings(per_fold=not every)
    cached = run_dir / "probe.json"
    if cached.is_file():
        report = read_json(cached)
        if (report.get("settings") == dataclasses.asdict(settings)
                and report.get("mode", "pooled").startswith(mode)
                and report.get("emotion_key") in report.get("pooled", {})):
            return report
    key = emotion_key(folds[0].emb)
    if key is None:
        log.warning("%s: no emotion embedding (emotion / fused) stored: no probe", run_dir)
        return None
    report = probe_run(run_dir, [key], settings, single_model="all" if every else None)
    # this folder belongs to the comparison: its probe files may be (re)written
    write_json(cached, report)
    write_text(run_dir / "probe.md", probe_markdown(report))
    return report


def _probe_stats(reports: list[dict]) -> dict | None:
    """Means over seeds of the pooled emotion-embedding probe."""
    rows = [r["pooled"][r["emotion_key"]] for r in reports if r and r.get("emotion_key")]
    if not rows:
        return None

    def avg(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    per_fold = [r["per_fold"][r["emotion_key"]]["mean_accuracy"] for r in reports
                if r and r.get("per_fold") and r["emotion_key"] in r["per_fold"]]
    per_fold = [v for v in per_fold if v is not None]
    return {"embedding": reports[0]["emotion_key"], "mode": reports[0].get("mode", "pooled"),
            "accuracy": avg("accuracy"), "accuracy_std": avg("accuracy_std"),
            "chance": avg("chance"), "majority": avg("majority"),
            "fold_chance": avg("fold_chance"), "n_speakers": rows[0].get("n_speakers"),
            "per_fold_accuracy": float(np.mean(per_fold)) if per_fold else None,
            "n_runs": len(rows)}


# ----------------------------------------------------------------------------------
# Summary


def _stats(per_seed: list[list[float]]) -> dict:
    """Mean and std (ddof=0) over all folds x seeds; seed_std: std (ddof=1) of per-seed means."""
    values = [v for run in per_seed for v in run]
    if not values:
        return {"mean": None, "std": None, "seed_std": None, "n_values": 0}
    means = [float(np.mean(run)) for run in per_seed if run]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "seed_std": float(np.std(means, ddof=1)) if len(means) > 1 else None,
            "n_values": len(values)}


def summarize(cmp_dir: str | Path, plan: ComparePlan | None = None) -> dict:
    """Write compare.json / .csv / .md from the finished runs; return the summary."""
    cmp_dir = Path(cmp_dir)
    plan = plan or read_plan(cmp_dir)
    timing = read_json(cmp_dir / TIMING) if (cmp_dir / TIMING).is_file() else {}
    rows, corpus = [], None
    for m in plan.models:
        runs, reports = [], []
        for seed in plan.seeds:
            name = run_name(m, seed)
            rd = cmp_dir / "runs" / name
            status = {"new": "pending"}.get(run_status(rd), run_status(rd))
            run = {"seed": seed, "run_dir": str(rd.relative_to(cmp_dir)), "status": status,
                   "seconds": timing.get(name)}
            if status == "done":
                res = read_json(rd / "results.json")
                corpus = corpus or res.get("corpus")
                run.update({k: [f[k] for f in res["folds"]] for k in METRICS})
                run["test_groups"] = [f["test_group"] for f in res["folds"]]
                if plan.probe:
                    reports.append(run_probe(rd))
            runs.append(run)
        done = [r for r in runs if r["status"] == "done"]
        secs = [r["seconds"] for r in done if r.get("seconds") is not None]
        rows.append({"model": m, "registry_name": plan.name(m), "doc": registry.get(plan.name(m)).doc,
                     "runs": runs,
                     "seeds_done": len(done), "seeds_planned": len(plan.seeds),
                     "seconds": float(np.sum(secs)) if secs else None,
                     **{k: _stats([r[k] for r in done]) for k in METRICS},
                     "probe": _probe_stats(reports) if plan.probe else None})
    ref = next((r for r in rows if r["model"] == plan.reference), None)
    ref_acc = (ref["probe"] or {}).get("accuracy") if ref else None
    for r in rows:
        if r["probe"] is not None:
            acc = r["probe"]["accuracy"]
            r["probe"]["disentanglement_pct"] = (100.0 * (ref_acc - acc) / ref_acc
                                                 if ref_acc and acc is not None else None)
    base = from_dict(plan.base)
    summary = {
        "compare_dir": str(cmp_dir), "config": plan.source, "cli_overrides": plan.cli_overrides,
        "corpus": corpus, "protocol": base.cv.protocol, "folds": base.cv.folds,
        "seeds": plan.seeds, "probe": plan.probe, "reference": plan.reference,
        "models": rows, "plan": plan.to_dict(),
    }
    write_json(cmp_dir / "compare.json", summary)
    write_text(cmp_dir / "compare.csv", compare_csv(summary))
    write_text(cmp_dir / "compare.md", compare_markdown(summary))
    return summary


def _pct(x, digits: int = 2):
    return None if x is None else round(100 * x, digits)


CSV_COLUMNS = ("model", "seeds_done", "seeds_planned", "n_values", "war_mean_pct", "war_std_pct",
               "uar_mean_pct", "uar_std_pct", "macro_f1_mean_pct", "macro_f1_std_pct",
               "uar_seed_std_pct", "probe_embedding", "probe_acc_pct", "probe_chance_pct",
               "probe_majority_pct", "probe_fold_chance_pct", "probe_per_fold_acc_pct",
               "disentanglement_pct", "probe_acc_std_pct", "probe_mode", "seconds")


def compare_csv(summary: dict) -> str:
    """One row per model; percentages."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in summary["models"]:
        p = r["probe"] or {}
        row = {"model": r["model"], "seeds_done": r["seeds_done"], "seeds_planned": r["seeds_planned"],
               "n_values": r["war"]["n_values"], "uar_seed_std_pct": _pct(r["uar"]["seed_std"], 4),
               "probe_embedding": p.get("embedding"), "probe_acc_pct": _pct(p.get("accuracy"), 4),
               "probe_chance_pct": _pct(p.get("chance"), 4),
               "probe_majority_pct": _pct(p.get("majority"), 4),
               "probe_fold_chance_pct": _pct(p.get("fold_chance"), 4),
               "probe_per_fold_acc_pct": _pct(p.get("per_fold_accuracy"), 4),
               "probe_acc_std_pct": _pct(p.get("accuracy_std"), 4), "probe_mode": p.get("mode"),
               "disentanglement_pct": (None if p.get("disentanglement_pct") is None
                                       else round(p["disentanglement_pct"], 4)),
               "seconds": None if r["seconds"] is None else round(r["seconds"], 1)}
        for k in METRICS:
            row[f"{k}_mean_pct"] = _pct(r[k]["mean"], 4)
            row[f"{k}_std_pct"] = _pct(r[k]["std"], 4)
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _ms(st: dict) -> str:
    return "—" if st["mean"] is None else f"{100 * st['mean']:.2f} ± {100 * st['std']:.2f}"


def _p(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def compare_markdown(summary: dict) -> str:
    folds = summary["folds"] or "all"
    lines = [f"# Model comparison on {summary['corpus']}", "",
             f"Config `{summary['config']}`"
             + (f" with `{' '.join(summary['cli_overrides'])}`" if summary["cli_overrides"] else "")
             + f"; protocol {summary['protocol']}, folds {folds}; seeds "
             f"{', '.join(map(str, summary['seeds']))}. Every model: the same folds, the same "
             "features, validation carved from the training part only.", "",
             "WAR / UAR / macro F1: mean ± std over folds × seeds (%)."]
    probe = summary["probe"]
    head = "| model | seeds | WAR | UAR | macro F1 |"
    sep = "| --- | --- | --- | --- | --- |"
    if probe:
        ref = summary["reference"]
        modes = {(r["probe"] or {}).get("mode", "pooled") for r in summary["models"] if r["probe"]}
        if any(str(m).startswith("every") for m in modes):
            how = ("every test fold holds one speaker, so each fold's model embeds the whole "
                   "corpus (its training speakers included) and gets its own probe; the figure "
                   "is the mean ± std over the fold models")
        else:
            how = ("pooled over all folds' test sets (embeddings from the fold models, "
                   "standardised per fold)")
        lines.append(
            "Speaker probe: a fresh speaker-ID classifier (logistic regression) on the frozen "
            f"emotion embedding, {how}; train/test disjoint in utterances, same speakers; "
            "lower = less identity. Chance = 1 / speakers; fold chance = guessing among the "
            "right fold's speakers"
            + (f"; disentanglement = relative drop vs {ref}." if ref else "."))
        head += " embedding | speaker probe % | chance % | majority % | fold chance % |"
        sep += " --- | --- | --- | --- | --- |"
        if summary["reference"]:
            head += f" disentanglement vs {summary['reference']} % |"
            sep += " --- |"
    head += " time |"
    sep += " --- |"
    lines += ["", head, sep]
    for r in summary["models"]:
        row = (f"| {r['model']} | {r['seeds_done']}/{r['seeds_planned']} | {_ms(r['war'])} | "
               f"{_ms(r['uar'])} | {_ms(r['macro_f1'])} |")
        if probe:
            p = r["probe"] or {}
            acc = _p(p.get("accuracy")) + (f" ± {_p(p['accuracy_std'])}" if p.get("accuracy_std") is not None
                                           else "")
            row += (f" {p.get('embedding') or '—'} | {acc} | {_p(p.get('chance'))} | "
                    f"{_p(p.get('majority'))} | {_p(p.get('fold_chance'))} |")
            if summary["reference"]:
                d = p.get("disentanglement_pct")
                row += f" {'—' if d is None else f'{d:+.1f}'} |"
        secs = "—" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        row += f" {secs} |"
        lines.append(row)
    lines += ["", "## Runs", "", "| model | seed | status | run folder | UAR per fold |",
              "| --- | --- | --- | --- | --- |"]
    for r in summary["models"]:
        for run in r["runs"]:
            per = ", ".join(f"{100 * v:.1f}" for v in run.get("uar", [])) or "—"
            lines.append(f"| {r['model']} | {run['seed']} | {run['status']} | `{run['run_dir']}` | {per} |")
    lines += ["", "## Models", ""]
    for r in summary["models"]:
        sec = summary["plan"]["sections"].get(r["model"]) or {}
        cfg = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sec.items()) or "defaults"
        alias = f" (`{r['registry_name']}`)" if r.get("registry_name", r["model"]) != r["model"] else ""
        lines.append(f"- **{r['model']}**{alias}: {r['doc']} — {cfg}")
    return "\n".join(lines) + "\n"


def format_table(summary: dict) -> str:
    """Plain-text table for the terminal."""
    probe = summary["probe"]
    out = [f"{'model':<14} {'seeds':>5}  {'WAR %':>14}  {'UAR %':>14}"
           + (f"  {'spk probe %':>11}  {'chance %':>8}  {'disent. %':>9}" if probe else "")]
    for r in summary["models"]:
        line = (f"{r['model']:<14} {r['seeds_done']:>2}/{r['seeds_planned']:<2}  "
                f"{_ms(r['war']):>14}  {_ms(r['uar']):>14}")
        if probe:
            p = r["probe"] or {}
            d = p.get("disentanglement_pct")
            line += (f"  {_p(p.get('accuracy')):>11}  {_p(p.get('chance')):>8}  "
                     f"{'-' if d is None else f'{d:+.1f}':>9}")
        out.append(line)
    return "\n".join(out)

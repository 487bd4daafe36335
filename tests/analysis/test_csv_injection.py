"""CSV formula injection (issue 16, item 12): ids and class names that a spreadsheet
would run as formulas are written as text (a leading single quote); numbers stay
numbers."""

from __future__ import annotations

import csv
import json

import numpy as np

from fdrl.analysis.report import make_report
from fdrl.utils.io import csv_cell, csv_text
from tests.analysis.test_plots import _fake_run

HOSTILE = ["=1+0", "@SUM(1)", "+", "-", "\tx", "\rx", "=cmd|' /C calc'!A0"]


def test_csv_cell_quotes_formulas_and_keeps_numbers():
    for value in HOSTILE:
        assert csv_cell(value) == "'" + value
    for value in (0, 1.5, -2, np.float32(-0.25), None, "-0.12500", "+3", "1e-5", "-.5", "abc",
                  "a=b", "x-1", ""):
        assert csv_cell(value) == value
    assert csv_cell("-1+2") == "'-1+2" and csv_cell("-inf") == "'-inf"
    text = csv_text(["id", "v"], [("=1+0", -1.5), ("ok", "-0.25000")])
    assert text == "id,v\n'=1+0,-1.5\nok,-0.25000\n"


def test_plot_csvs_escape_hostile_ids_and_class_names(tmp_path):
    classes = ["=1+0", "@SUM(1)", "+", "-"]
    run = _fake_run(tmp_path, "full", aligned=True, n=40)
    for name in ("run.json", "results.json"):
        meta = json.loads((run / name).read_text())
        meta["classes"] = classes
        (run / name).write_text(json.dumps(meta))
    ids = [HOSTILE[i % len(HOSTILE)] + str(i) for i in range(40)]
    for fold in (run / "folds").iterdir():
        npz = fold / "representations.npz"
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["utt_id"], arrays["classes"] = np.array(ids), np.array(classes)
        np.savez(npz, **arrays)

    out = make_report(run, max_points=160)  # all 40 utterances x 4 types
    cells = []
    for name in ("fig3a_tsne", "fig3b_centroids", "confusion", "learning_curves", "diagnostics"):
        with open(out / f"{name}.csv", newline="") as fh:
            cells += [c for row in csv.reader(fh) for c in row]
    assert cells
    dangerous = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(c)]
    assert dangerous == []
    conf = list(csv.DictReader(open(out / "confusion.csv", newline="")))
    assert {r["true"] for r in conf} == {"'" + c for c in classes}
    assert all(_is_number(r["count"]) and _is_number(r["row_fraction"]) for r in conf)
    tsne = list(csv.DictReader(open(out / "fig3a_tsne.csv", newline="")))
    # "+2" is a number to a spreadsheet, not a formula: kept
    assert {r["utt_id"] for r in tsne} <= {u if _is_number(u) else "'" + u for u in ids}
    assert "'\rx5" in {r["utt_id"] for r in tsne}  # a carriage return is quoted, not a row break
    assert any(float(r["x"]) < 0 for r in tsne)  # negative coordinates stay numbers


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False

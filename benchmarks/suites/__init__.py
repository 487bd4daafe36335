"""The benchmark suites run by ``benchmarks/run.py``, one module each.

A suite module has ``NAME``, ``TITLE``, ``SETTINGS`` (``{"full": ..., "quick": ...,
"tiny": ...}``) and ``run(ctx: Context) -> SuiteResult``; it raises
:class:`~benchmarks.suites.common.Skip` with a reason when its data are absent.

==============  =====================================================================
``iemocap``       IEMOCAP bimodal (log-mel + MiniLM): baselines, FDRL, S1-S6, logreg
``iemocap-text``  IEMOCAP transcripts: text-only MiniLM (frozen / fine-tuned), logreg
``emodb``         EmoDB: speech-only and FDRL on eGeMAPS / log-mel, functionals + logreg,
                  speaker probes
``encode``        feature extraction: toolkit vs plain loop
``train-speed``   FDRL steps/s for C = 4 vs 16; trainer vs plain loop
``cv-speed``      5-fold CV wall time on the demo corpus, cold and cached
``predict``       prediction latency p50 / p95 and batch throughput
==============  =====================================================================
"""

from __future__ import annotations

import importlib

#: suite name -> module (in report order)
SUITES = {
    "iemocap": "iemocap",
    "iemocap-text": "iemocap_text",
    "emodb": "emodb",
    "encode": "encode",
    "train-speed": "train_speed",
    "cv-speed": "cv_speed",
    "predict": "predict",
}

#: suites that measure time: with ``run.py --jobs N`` they still run one at a time, alone,
#: after the accuracy suites (whose parallel training would distort their timings)
SPEED = ("encode", "train-speed", "cv-speed", "predict")


def load(name: str):
    """The module of suite ``name``."""
    return importlib.import_module(f"{__name__}.{SUITES[name]}")

"""A description of the machine, printed next to every measured speed."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    """Cores, CPU model, torch threads and versions, and the 1-minute load average
    (other work on the machine slows every figure; the load average says how much)."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2)}

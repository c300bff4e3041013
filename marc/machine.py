"""The machine a measurement ran on, recorded next to every report's numbers (benchmark, experiments):
CPU model, cores, platform, Python and the load average when the run started."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (NaN where the OS has none): a shared machine shows here."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return [round(x, 2) for x in load]


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
    }

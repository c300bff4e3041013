"""The machine a measurement ran on, recorded next to every report's numbers (benchmark, experiments):
CPU model, cores, platform, Python and the load average when the run started."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

# The instructions int8 and fp32 inference speed depends on (ONNX Runtime picks kernels by them), named in
# every report: the same "AMD EPYC" may be a Zen 3 without VNNI or a Zen 4 with AVX-512 VNNI.
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_model() -> str:
    """The CPU's model name with its family/model numbers and the int8-relevant instructions it has
    (Linux /proc/cpuinfo, e.g. "AMD EPYC (family 25 model 17; avx2 avx512f avx512_vnni)"), else what
    `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    ids = [f"family {fields['cpu family']}"] if "cpu family" in fields else []
    ids += [f"model {fields['model']}"] if "model" in fields else []
    named = " ".join(flag for flag in INT8_FLAGS if flag in flags)
    extras = "; ".join(part for part in (" ".join(ids), named) if part)
    name = fields.get("model name") or platform.processor() or platform.machine()
    return f"{name} ({extras})" if extras else name


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

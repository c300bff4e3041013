"""Bit-reproducible CPU builds: the same `make artifact` should give the same weights, hence the same
fingerprint, on x86-64 machines with AVX2 whatever their CPU generation or thread count (what was
checked, and what stays machine-dependent: docs/operations.md, "Reproducible artifacts").

torch chooses its CPU kernels by what the processor offers, and each choice rounds differently:
ATen's own vectorised kernels (AVX-512 or AVX2: RMSNorm, softmax, pooling), MKL's GEMM code path
(every Linear of the backbone) and oneDNN's JIT kernels (the GELU of A). Measured on this repo's
tiny build, switching any one of the three changes the weights by a few ulps, and training turns
that into another fingerprint. `pin_cpu_kernels` fixes all three to their AVX2 paths: ATen's AVX2
kernels, MKL's conditional numerical reproducibility mode (CNR) for AVX2 in its strict form (GEMM
results independent of the thread count too) and oneDNN capped at AVX2. Run-to-run on one machine
the build was already deterministic (seeded, no parallel reductions with races).

The libraries read these variables once, at their first operation: pin before torch computes
anything (`marc_serve.cli.main` does, for every command). A variable already set is left alone: whoever
sets one on purpose opts out of reproducibility across machines.
"""

from __future__ import annotations

import os
from importlib.metadata import version

NUMERIC_LIBRARIES = ("torch", "transformers", "gguf", "numpy")
"""Another release of any of these may round differently (bit-identical builds need the same ones)."""
PINNED_CPU_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def pin_cpu_kernels() -> None:
    for name, value in PINNED_CPU_KERNELS.items():
        os.environ.setdefault(name, value)


def kernel_profile() -> str:
    """What this process computes with: the versions of the libraries that run or load the backbone,
    and the kernel choices above. Part of the feature cache key (states computed another way are
    never reused) and of the manifest (two builds that differ say why)."""
    import torch

    versions = ", ".join(f"{name} {version(name)}" for name in NUMERIC_LIBRARIES)
    settings = ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in PINNED_CPU_KERNELS)
    return f"{versions}, ATen kernels {torch.backends.cpu.get_cpu_capability()}, {settings}"

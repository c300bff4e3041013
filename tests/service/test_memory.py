"""service.memory: the malloc thresholds that let a reloading process hand a retired model's memory back.
Each case runs in a fresh interpreter: the thresholds are per process, and glibc raises them for good
the first time a large block is freed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# In a fresh process: free one 4 MiB block (mapped on its own, as glibc starts), allocate another, and
# report whether the second was mapped too (mallinfo2's hblks) and what fix_malloc_thresholds returned.
PROBE = """
import ctypes, json, sys
from service.memory import fix_malloc_thresholds
fixed = fix_malloc_thresholds() if sys.argv[1] == "fix" else None
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(4 << 20)
print(json.dumps({"fixed": fixed, "mapped": libc.mallinfo2().hblks - before}))
libc.free(block)
"""


def _probe(mode: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")


def test_untuned_glibc_serves_a_large_block_from_its_heap_after_the_first_is_freed() -> None:
    # What the fix is for: without it, a freed model's blocks would stay in the heap.
    assert _probe("untouched") == {"fixed": None, "mapped": 0}


def test_fixed_thresholds_keep_large_blocks_mapped_on_their_own() -> None:
    assert _probe("fix") == {"fixed": True, "mapped": 1}


@pytest.mark.parametrize(
    "env",
    [{"MALLOC_MMAP_THRESHOLD_": str(64 << 20)}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=67108864"}],
)
def test_an_operators_malloc_tuning_is_left_as_it_is(env: dict[str, str]) -> None:
    # Their threshold (64 MiB) puts the 4 MiB block in the heap; ours would have mapped it.
    assert _probe("fix", **env) == {"fixed": False, "mapped": 0}

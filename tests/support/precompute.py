"""`marc precompute --shard i/N` as a Kubernetes Indexed Job runs it: N processes of the real CLI at
once (`run_shards`), each told its index as JOB_COMPLETION_INDEX is turned into ``--shard``, with the
final count line of each read back (`ShardRun`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import command_environment

COUNT_LINE = re.compile(
    r"shard (?P<index>\d+)/(?P<count>\d+): (?P<catalogue>\d+) items in the catalogue, (?P<in_shard>\d+) in "
    r"this shard: (?P<cached>\d+) already cached, (?P<computed>\d+) computed, (?P<failed>\d+) failed "
    r"\((?P<not_reached>\d+) not reached\)"
)


@dataclass(frozen=True)
class ShardRun:
    returncode: int
    stdout: str
    stderr: str

    def counts(self) -> dict[str, int]:
        """The numbers of the final count line."""
        found = COUNT_LINE.search(self.stdout)
        assert found, f"no count line (exit {self.returncode}):\n{self.stdout}\n{self.stderr[-3000:]}"
        return {name: int(value) for name, value in found.groupdict().items()}


def write_items(path: Path, items: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"item_id": item_id, "text": text}) + "\n" for item_id, text in items))
    return path


def marc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "marc_serve", *args]


def run_shards(
    shards: int,
    args: list[str],
    *,
    indices: list[int] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> list[ShardRun]:
    """``marc precompute --shard i/shards <args>`` for every i (or those in ``indices``), all at once.
    Each process gets another PYTHONHASHSEED, so an assignment that leant on Python's salted hash()
    would show. The caller's MARC_* variables are not passed on: the processes run on ``args``, ``env``
    and the tests' variant setting (`tests.support.servers.command_environment`)."""
    processes = [
        subprocess.Popen(
            marc_command("precompute", "--shard", f"{index}/{shards}", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**command_environment(), **(env or {}), "PYTHONHASHSEED": str(index + 1)},
        )
        for index in (range(shards) if indices is None else indices)
    ]
    runs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        runs.append(ShardRun(process.returncode, stdout, stderr))
    return runs

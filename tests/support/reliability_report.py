"""Figures of the reliability suite: tests call `record(section, **figures)`; `make reliability` runs
the suite with MARC_RELIABILITY_REPORT set and then this script writes them into RELIABILITY.md.

    MARC_RELIABILITY_REPORT=reports/reliability.json pytest tests/reliability/
    python tests/support/reliability_report.py [--report reports/reliability.json] [--doc RELIABILITY.md]

Without MARC_RELIABILITY_REPORT (plain `make test`) `record` does nothing, so CI leaves no files.
Each section of RELIABILITY.md has a block between ``<!-- figures:NAME -->`` and
``<!-- /figures:NAME -->`` that is replaced by a table of that section's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from marc.machine import machine_info

REPORT_ENV = "MARC_RELIABILITY_REPORT"
ROOT = Path(__file__).resolve().parents[2]


def record(section: str, **figures: Any) -> None:
    """Merge ``figures`` into ``section`` of the report file named by $MARC_RELIABILITY_REPORT."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.setdefault(section, {}).update(figures)
    machine = machine_info()
    report["_run"] = {
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{machine['platform']}, {machine['cores']} CPU cores ({machine['cpu']}), "
        f"Python {machine['python']}",
    }
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def table(figures: dict[str, Any]) -> str:
    rows = [f"| {name.replace('_', ' ')} | {_cell(value)} |" for name, value in sorted(figures.items())]
    return "\n".join(["| figure | value |", "|---|---|", *rows])


def render(report: dict[str, Any], document: str) -> str:
    """``document`` with every figures block filled from ``report`` (missing sections say so)."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        body = table(report[name]) if name in report else "_not measured in the last run_"
        return f"<!-- figures:{name} -->\n{body}\n<!-- /figures:{name} -->"

    filled = re.sub(r"<!-- figures:(\w+) -->.*?<!-- /figures:\1 -->", fill, document, flags=re.DOTALL)
    run = report.get("_run", {})
    stamp = f"<!-- run -->Last run: {run.get('finished_at', '?')} on {run.get('machine', '?')}.<!-- /run -->"
    return re.sub(r"<!-- run -->.*?<!-- /run -->", stamp, filled, flags=re.DOTALL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the reliability suite's figures into RELIABILITY.md.")
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "reliability.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "RELIABILITY.md")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"{args.report}: no report; run `make reliability` first", file=sys.stderr)
        return 1
    report = json.loads(args.report.read_text())
    args.doc.write_text(render(report, args.doc.read_text()))
    sections = sorted(name for name in report if not name.startswith("_"))
    print(f"{args.doc}: figures of {len(sections)} sections from {args.report} ({', '.join(sections)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

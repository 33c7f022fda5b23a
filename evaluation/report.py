"""Plain-text tables and JSON result files that always carry the protocol options they were computed with."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.atomic import write_json

REPORT_VERSION = 1


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], decimals: int = 2) -> str:
    """Fixed-width text table; floats printed with `decimals` places, None as '-'."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.{decimals}f}"
        return str(v)

    cells = [[cell(v) for v in header]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(row[1:], widths[1:])]
        lines.append("  ".join([first, *rest]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_report(task: str, metrics: Mapping[str, float], options: Mapping[str, Any],
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The result-file payload: task, protocol options, metrics (and any extra fields, e.g. epoch)."""
    report: dict[str, Any] = {"version": REPORT_VERSION, "task": task, "options": dict(options),
                              "metrics": {k: float(v) for k, v in metrics.items()}}
    if extra:
        clash = set(extra) & set(report)
        if clash:
            raise ValueError(f"extra report fields clash with reserved keys: {sorted(clash)}")
        report.update(extra)
    return report


def write_report(path: str | Path, task: str, metrics: Mapping[str, float], options: Mapping[str, Any],
                 extra: Mapping[str, Any] | None = None) -> Path:
    """Write a result JSON that records the protocol options next to the metrics."""
    return write_json(path, build_report(task, metrics, options, extra), sort_keys=True)


def load_report(path: str | Path, task: str | None = None, options: Mapping[str, Any] | None = None) -> dict:
    """Read a result JSON; if `task` / `options` are given they must match, so protocols are never mixed."""
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    if task is not None and report.get("task") != task:
        raise ValueError(f"{path}: task {report.get('task')!r}, expected {task!r}")
    if options is not None:
        diff = options_diff(report.get("options", {}), options)
        if diff:
            raise ValueError(f"{path}: computed with different protocol options: {'; '.join(diff)}")
    return report


def options_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two option mappings (JSON-normalised)."""
    na, nb = json.loads(json.dumps(dict(a))), json.loads(json.dumps(dict(b)))
    return [f"{k}: {na.get(k)!r} != {nb.get(k)!r}" for k in sorted(set(na) | set(nb)) if na.get(k) != nb.get(k)]

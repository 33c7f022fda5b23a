"""Training curves of one or several runs from their `log.jsonl`, as one PNG.

    python scripts/plot_run.py OUT                        # -> OUT/curves.png
    python scripts/plot_run.py OUT_A OUT_B --out cmp.png  # runs overlaid, labelled by folder name
    python scripts/plot_run.py OUT --quantities loss lr eval/r_mean

One panel per quantity against the global step: every number of the `train` records (each loss term, the
weighted `loss`, `lr`, `grad_norm`, `samples_per_s`) and of the `eval` records (each evaluation metric). A
run's `final` record is marked (a star) on the panel of the same metric, or gets panels of its own
(`--evaluate` runs). Panels are named `<kind>/<key>` (`train/loss`, `eval/map`, `final/map`);
`--quantities` takes those names or bare keys. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.tracking import META_KEYS  # noqa: E402  (record keys that are positions, not quantities)

PANEL_KINDS = ("train", "eval")  # record kinds drawn as curves; `final` values mark the eval panels
LOG_NAME, DEFAULT_PNG = "log.jsonl", "curves.png"


class PlotError(ValueError):
    """Bad input: the message names the folder or file (and line)."""


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """The records of `folder/log.jsonl`, in file order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PlotError(f"run folder not found: {folder}")
    path = folder / LOG_NAME
    if not path.is_file():
        raise PlotError(f"{path}: not found (the run writes it from its first log line)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlotError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
            raise PlotError(f"{path}, line {number}: not a metric record (a JSON object with a 'kind')")
        if not isinstance(record.get("step", 0), (int, float)):
            raise PlotError(f"{path}, line {number}: 'step' is not a number")
        records.append(record)
    if not records:
        raise PlotError(f"{path}: no records")
    return records


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k not in META_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def series(records: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """`<kind>/<key>` -> (step, value) points sorted by step, for the kinds in PANEL_KINDS and `final`; a step
    logged twice (a resumed run) keeps its last value."""
    points: dict[str, dict[float, float]] = {}
    for record in records:
        kind = record["kind"]
        if kind not in (*PANEL_KINDS, "final"):
            continue
        for key, value in _numbers(record).items():
            points.setdefault(f"{kind}/{key}", {})[float(record.get("step", 0))] = value
    return {name: sorted(steps.items()) for name, steps in points.items()}


def panel_names(runs: Sequence[dict[str, list[tuple[float, float]]]], wanted: Sequence[str] | None = None) -> list[str]:
    """The panels to draw, in order of first appearance (train, eval, then final metrics that no eval record
    has, e.g. of an `--evaluate` run); `wanted` selects and orders them (full names or bare keys)."""
    available = [name for kind in (*PANEL_KINDS, "final") for run in runs for name in run
                 if name.startswith(kind + "/")]
    available = list(dict.fromkeys(n for n in available
                                   if not n.startswith("final/") or "eval/" + n[6:] not in available))
    if not wanted:
        return available
    chosen = []
    for item in wanted:
        matches = [n for n in available if n == item or n.split("/", 1)[1] == item]
        if not matches:
            raise PlotError(f"no quantity {item!r} in the logs; available: {', '.join(available)}")
        chosen.extend(matches)
    return list(dict.fromkeys(chosen))


def run_labels(folders: Sequence[Path]) -> list[str]:
    """Folder names, or the paths as given where two names coincide."""
    names = [f.resolve().name or str(f) for f in folders]
    return [name if names.count(name) == 1 else str(folder) for name, folder in zip(names, folders)]


def plot_runs(folders: Sequence[str | Path], out: str | Path, quantities: Sequence[str] | None = None) -> list[str]:
    """Draw the curves of `folders` into the PNG `out`; returns the panel names, in drawing order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display needed
    from matplotlib.figure import Figure

    folders = [Path(f) for f in folders]
    runs = [series(load_records(f)) for f in folders]
    names = panel_names(runs, quantities)
    if not names:
        raise PlotError(f"no train, eval or final numbers in {', '.join(str(f / LOG_NAME) for f in folders)}")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        final = "final/" + name.split("/", 1)[1] if name.startswith("eval/") else None
        for index, (label, run) in enumerate(zip(run_labels(folders), runs)):
            color = f"C{index % 10}"
            if name in run:
                steps, values = zip(*run[name])
                ax.plot(steps, values, color=color, label=label, marker="." if len(steps) < 30 else None)
            if final and final in run:
                steps, values = zip(*run[final])
                ax.plot(steps, values, color=color, marker="*", markersize=11, linestyle="none",
                        label=f"{label} (final)")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(folders) > 1 or final:
            ax.legend(fontsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=90)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="OUT", help="run folders (each with a log.jsonl)")
    parser.add_argument("--out", type=Path, help=f"PNG to write (default OUT/{DEFAULT_PNG}; required for several runs)")
    parser.add_argument("--quantities", nargs="+", metavar="NAME",
                        help="panels to draw, e.g. train/loss lr eval/r_mean (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.out is None and len(args.runs) > 1:
            raise PlotError("--out FILE.png is required with several runs")
        out = args.out or args.runs[0] / DEFAULT_PNG
        names = plot_runs(args.runs, out, args.quantities)
    except (PlotError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(names)} panels: {', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

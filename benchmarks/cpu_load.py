"""CPU training speed on a quiet and on a busy machine: the ASEN++ synthetic stage-1 step (the demo's slowest
part) run by `asen_main.py`, with and without background busy-loop processes, for several thread settings.

    python benchmarks/cpu_load.py                       # default variants, 0 and 2 busy loops
    python benchmarks/cpu_load.py --busy 0 2 4 --steps 50 --rounds 2
    python benchmarks/cpu_load.py --variant 'threads=2' --variant 'threads=2 OMP_WAIT_POLICY=PASSIVE'

A variant is a space-separated list of `threads=N` (the run's `CPU_THREADS`; `auto` = the framework's
choice) and environment assignments for the training process. Each run trains `--steps` steps from scratch and
reports the loop's own it/s (from its last log line), so start-up and data generation are not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"\[(\d+)/\d+\] ([\d.]+) it/s")
DEFAULT_VARIANTS = ["threads=auto", "threads=1", "threads=2 OMP_WAIT_POLICY=ACTIVE", "threads=2"]


def busy_loops(n: int) -> list[subprocess.Popen]:
    """`n` processes that each keep one core busy (what other jobs on a shared machine do)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    threads, env = "auto", {}
    for part in text.split():
        key, _, value = part.partition("=")
        if key == "threads":
            threads = value
        else:
            env[key] = value
    return threads, env


def run_variant(data_cfg: Path, save_dir: Path, variant: str, steps: int) -> float:
    """Seconds per training step of one stage-1 run."""
    threads, extra_env = parse_variant(variant)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(extra_env)
    sets = [f"SAVE_DIR={save_dir}", f"DATA.BASE_PATH={data_cfg.parent.parent}", "DEVICE=cpu", f"CKPT.STOP_AFTER_STEPS={steps}", f"SOLVER.LOG_PERIOD={steps}",
            "LOGGER.PROGRESS_BAR=false"]
    if threads != "auto":
        sets.append(f"CPU_THREADS={threads}")
    cmd = [sys.executable, "asen_main.py", "--cfg", str(data_cfg), "configs/asen/synthetic/s1.yaml", "--set", *sets]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"run failed ({variant}): {out.stderr.strip().splitlines()[-1:]}")
    rates = RATE.findall(out.stdout)
    if not rates:
        raise SystemExit(f"no rate line in the output of {variant}")
    return 1.0 / float(rates[-1][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="background busy loops per case")
    parser.add_argument("--variant", action="append", help="thread setting (repeatable); see above")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every case; the median is reported")
    args = parser.parse_args()
    variants = args.variant or DEFAULT_VARIANTS
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        subprocess.run([sys.executable, "-m", "datasets.synthetic", "asen", "--out", str(tmp_path), "--quiet"],
                       cwd=ROOT, check=True)
        data_cfg = tmp_path / "asen" / "synthetic.yaml"
        print(f"{os.cpu_count()} cores, {args.steps} steps per run, load average before: "
              f"{os.getloadavg()[0]:.2f}")
        print("| busy loops | variant | s/step | load avg |\n|---:|---|---:|---:|")
        for busy in args.busy:
            for variant in variants:
                times = []
                for r in range(args.rounds):
                    procs = busy_loops(busy)
                    try:
                        time.sleep(0.5 if busy else 0)
                        times.append(run_variant(data_cfg, tmp_path / f"runs_{busy}_{r}_{len(times)}", variant,
                                                 args.steps))
                    finally:
                        for p in procs:
                            p.kill()
                    load = os.getloadavg()[0]
                times.sort()
                print(f"| {busy} | `{variant}` | {times[len(times) // 2]:.3f} | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()

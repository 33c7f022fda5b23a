"""Start-up shared by every entry point: arguments, process group, logging, seeds, output folder."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import engine
from engine.config import ConfigError, config_to_dict, dump_config
from engine.distributed import DistInfo, broadcast_object, cleanup, init_distributed
from engine.errors import DataError, RunError
from engine.logger import get_logger, setup_logging
from engine.precision import fast_cuda_kernels
from engine.run_folder import RunFolder
from engine.sections import RuntimeConfig
from engine.seeding import seed_everything
from engine.signals import Interrupted
from engine.tracking import add_report_to_argument


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the FINE entry points (published names kept)."""
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", default=None,
                        help="folder for logs, checkpoints and results (overrides the config)")
    parser.add_argument("--checkpoint", "--pre_point", dest="checkpoint", default=None,
                        help="weights to start from (ours or a published checkpoint)")
    parser.add_argument("--resume", default=None, metavar="FILE|FOLDER|auto",
                        help="continue a run exactly, in its own folder: a checkpoint_last.pth written by this "
                             "framework, a run folder (its checkpoint_last.pth), or 'auto' (the output folder's, "
                             "else a fresh run)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new training run in a folder that holds another run: remove that run's "
                             "checkpoints, logs and results first (only the files the framework writes)")
    parser.add_argument("--evaluate", action="store_true", help="evaluate only, no training")
    add_report_to_argument(parser)
    # torch.distributed.launch without --use_env passes this; the rank is read from the environment.
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help=argparse.SUPPRESS)


def start_run(runtime: RuntimeConfig, output_dir: str | Path, config: object | None = None, *,
              folder: RunFolder | None = None) -> DistInfo:
    """Initialise distribution; claim the output folder (`folder`: rank 0 locks it and checks it before anything
    is written, engine.run_folder); logging (rank 0 to `output_dir/log.txt`), seeds; save the resolved config."""
    info = init_distributed(runtime.device, runtime.dist_backend, runtime.dist_timeout_s, runtime.stall_timeout_s)
    output_dir = Path(output_dir)
    notes = open_folder(folder, info) if folder is not None else []
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir, info.rank)
    for note in notes:
        get_logger().info(note)
    seed_everything(runtime.seed, info.rank)
    if info.device.type == "cpu":
        torch.set_num_threads(cpu_threads(runtime))
        policy = os.environ.get("OMP_WAIT_POLICY", "default (spinning)")
        if not engine.POLICY_IN_EFFECT:
            policy = "default (spinning; torch was imported before engine, see engine/__init__.py)"
        get_logger().info("CPU: %d intra-op threads, OpenMP wait policy %s", torch.get_num_threads(), policy)
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True)
    elif info.device.type == "cuda":
        fast_cuda_kernels()
    get_logger().info("rank %d/%d on %s (backend %s); output in %s", info.rank, info.world_size, info.device,
                      info.backend or "none", output_dir)
    if info.is_main and config is not None:
        dump_config(config, output_dir / "config.yaml")
        get_logger().info("resolved config (also in config.yaml): %s", compact_config(config))
    return info


def open_folder(folder: RunFolder, info: DistInfo) -> list[str]:
    """Rank 0 claims the run's folder (RunFolder.open); every rank fails alike when it cannot."""
    notes: list[str] = []
    error = None
    if info.is_main:
        try:
            notes = folder.open()
        except (RunError, OSError) as exc:
            error = str(exc) if isinstance(exc, RunError) else f"cannot prepare the output folder {folder.path}: {exc}"
    if info.distributed:
        error = broadcast_object(error)
    if error is not None:
        raise RunError(error)
    return notes


def compact_config(config: object) -> str:
    """The resolved config on one line (JSON) for the log."""
    return json.dumps(config_to_dict(config), separators=(",", ":"), default=str)


def cpu_threads(runtime: RuntimeConfig) -> int:
    """Intra-op threads for a CPU run. More threads than free cores (loader workers and other ranks share
    them) makes OpenMP spin against itself and can slow training by orders of magnitude."""
    if runtime.cpu_threads is not None:
        return max(1, runtime.cpu_threads)
    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_process - runtime.num_workers)


def run_main(main: Callable[[list[str] | None], int]) -> None:
    """Run an entry point's `main`, turning bad-input errors into one clear line and exit status 2, and a
    training run stopped by SIGTERM/SIGINT (engine.signals.Interrupted, after its checkpoint) into one line
    and exit status 128 + signal (143 / 130).

    Set FASHIONFINE_TRACEBACK=1 to see the full traceback instead.
    """
    try:
        code = main(None)
        cleanup()  # destroy the process group of a finished run (torch warns at exit otherwise)
    except Interrupted as exc:
        if exc.report:
            print(str(exc), file=sys.stderr)
        cleanup()  # every rank stopped at the same step
        code = exc.exit_status
    except (ConfigError, DataError, RunError, FileNotFoundError) as exc:
        if os.environ.get("FASHIONFINE_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)

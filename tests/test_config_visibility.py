"""Config visibility of the entry points: `--help-config` shows resolved values with their origin, `--print-config`
prints YAML that loads back to the same config, and every run logs its resolved config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import asen_main
import retrieval
from engine.config import ConfigError, config_to_dict, dump_config, load_config
from engine.logger import get_logger
from engine.run import start_run
from engine.sections import RuntimeConfig
from tasks.asen_schema import AsenConfig
from tasks.fine_schema import RetrievalConfig
from tests.asen_helpers import synthetic_asen, tiny_args

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "retrieval_tiny.yaml"
FINE_TINY = ROOT / "configs" / "fine_tiny.yaml"


def run_help(main, argv: list[str], capsys) -> list[str]:
    """Call an entry point's `main`, expect exit status 0, return its stdout lines."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out.splitlines()


def line_of(lines: list[str], key: str) -> str:
    matches = [line for line in lines if line.startswith(key + ": ")]
    assert len(matches) == 1, (key, matches)
    return matches[0]


def test_help_config_shows_the_files_values_and_origins(capsys):
    tiny = yaml.safe_load(TINY.read_text())
    epochs, lr = tiny["train"]["epochs"], float(tiny["optim"]["lr"])
    batch = yaml.safe_load(FINE_TINY.read_text())["data"]["batch_size"]
    defaults = RetrievalConfig()
    assert (epochs, lr, batch) != (defaults.train.epochs, defaults.optim.lr, defaults.data.batch_size)
    assert epochs != defaults.train.epochs and lr != defaults.optim.lr
    lines = run_help(retrieval.main, ["--config", str(TINY), "--help-config"], capsys)
    assert lines[0].startswith("# resolved from ") and str(TINY) in lines[0]
    assert line_of(lines, "train.epochs") == f"train.epochs: int = {epochs!r}  (from {TINY})  # number of epochs"
    assert line_of(lines, "optim.lr").startswith(f"optim.lr: float = {lr!r}  (from {TINY})  # ")
    assert line_of(lines, "data.batch_size").startswith(f"data.batch_size: int = {batch!r}  (from {FINE_TINY})")
    assert line_of(lines, "data.heldout_seed").startswith(
        f"data.heldout_seed: int = {defaults.data.heldout_seed!r}  (default)  # ")
    assert all(line.startswith("#") or " = " in line for line in lines)


def test_help_config_shows_set_as_origin(capsys):
    lines = run_help(retrieval.main, ["--config", str(TINY), "--set", "optim.lr=2.5e-4", "train.epochs=3",
                                      "--help-config"], capsys)
    assert line_of(lines, "optim.lr").startswith("optim.lr: float = 0.00025  (from --set optim.lr=2.5e-4)  # ")
    assert line_of(lines, "train.epochs").startswith("train.epochs: int = 3  (from --set train.epochs=3)")
    assert lines[0].endswith(" and --set")


def test_help_config_of_a_bad_config_is_the_usual_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        retrieval.main(["--config", str(TINY), "--set", "optim.lrr=1", "--help-config"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {TINY}\ntrain:\n  epochz: 2\n")
    env = {k: v for k, v in os.environ.items() if k != "FASHIONFINE_TRACEBACK"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "retrieval.py", "--config", str(bad), "--help-config"], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {bad}: unknown key 'train.epochz'")


def test_print_config_round_trips(tmp_path, capsys):
    argv = ["--config", str(TINY), "--set", "optim.lr=3.5e-4", "data.batch_size=7"]
    text = "\n".join(run_help(retrieval.main, argv + ["--print-config"], capsys)) + "\n"
    expected = load_config(RetrievalConfig, [TINY], ["optim.lr=3.5e-4", "data.batch_size=7"])
    dump_config(expected, tmp_path / "dumped.yaml")
    assert text == (tmp_path / "dumped.yaml").read_text()  # the format of OUT/config.yaml
    saved = tmp_path / "printed.yaml"
    saved.write_text(text)
    again = load_config(RetrievalConfig, [saved])
    assert again == expected and again.optim.lr == 3.5e-4 and again.data.batch_size == 7
    assert again != load_config(RetrievalConfig, [TINY])
    assert "\n".join(run_help(retrieval.main, ["--config", str(saved), "--print-config"], capsys)) + "\n" == text


def test_asen_help_config_without_cfg_shows_the_defaults(capsys):
    lines = run_help(asen_main.main, ["--help-config"], capsys)
    assert lines[0] == "# no config file given: the schema defaults"
    assert line_of(lines, "SOLVER.BASE_LR").startswith("SOLVER.BASE_LR: float = 0.0001  # ")
    assert not any("(from " in line for line in lines)
    assert len(lines) > 40


def test_asen_help_and_print_config_of_the_synthetic_s1_run(tmp_path_factory, tmp_path, capsys):
    data = synthetic_asen(tmp_path_factory)
    argv = tiny_args(data, 1, tmp_path / "runs")
    s1 = ROOT / "configs" / "asen" / "synthetic" / "s1.yaml"
    lines = run_help(asen_main.main, argv + ["--help-config"], capsys)
    assert line_of(lines, "SOLVER.EPOCHS").startswith(f"SOLVER.EPOCHS: int = 3  (from {s1})")
    assert line_of(lines, "DEVICE").startswith("DEVICE: Literal['auto', 'cpu', 'cuda'] = 'cpu'  (from --set DEVICE=cpu)")
    text = "\n".join(run_help(asen_main.main, argv + ["--print-config"], capsys)) + "\n"
    saved = tmp_path / "asen.yaml"
    saved.write_text(text)
    expected = load_config(AsenConfig, argv[1:3], argv[4:])
    assert load_config(AsenConfig, [saved]) == expected and expected.SOLVER.EPOCHS == 3
    assert "\n".join(run_help(asen_main.main, ["--cfg", str(saved), "--print-config"], capsys)) + "\n" == text


def test_start_run_logs_the_resolved_config(tmp_path):
    cfg = load_config(RetrievalConfig, [TINY], ["optim.lr=4e-4"])
    logger = get_logger()
    threads, level, handlers, propagate = (torch.get_num_threads(), logger.level, list(logger.handlers),
                                           logger.propagate)
    try:
        start_run(RuntimeConfig(device="cpu", cpu_threads=1, num_workers=0), tmp_path, cfg)
    finally:
        torch.set_num_threads(threads)
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    lines = [line for line in (tmp_path / "log.txt").read_text().splitlines() if "resolved config" in line]
    assert len(lines) == 1
    logged = json.loads(lines[0].split("config.yaml): ", 1)[1])
    assert logged == json.loads(json.dumps(config_to_dict(cfg)))
    assert logged["optim"]["lr"] == 4e-4
    assert (tmp_path / "config.yaml").is_file()

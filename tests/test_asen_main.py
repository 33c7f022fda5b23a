"""asen_main.py end to end on the synthetic data: exact resume, stage 1 -> stage 2, --test, --embed, errors."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import asen_main
from engine.checkpoint import load_file
from engine.config import ConfigError, load_config
from engine.errors import DataError
from tasks.asen import AsenTask
from tasks.asen_schema import AsenConfig
from tests.asen_helpers import ROOT, synthetic_asen, tiny_args, writable_copy

SHORT = ("DATA.NUM_TRIPLETS=96", "SOLVER.EPOCHS=2", "SOLVER.LOG_PERIOD=4")


@pytest.fixture
def data(tmp_path_factory):
    return synthetic_asen(tmp_path_factory)


def run(data, stage, out, *extra, cli=()):
    return asen_main.main([*tiny_args(data, stage, out, *extra), *cli])


def tensors(state: dict) -> list[torch.Tensor]:
    out = []
    for value in state.values():
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, dict):
            out.extend(tensors(value))
    return out


def assert_same_run(a_path, b_path):
    a, b = load_file(a_path), load_file(b_path)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert all(torch.equal(x, y) for x, y in zip(tensors(a["optimizer"]["state"]), tensors(b["optimizer"]["state"])))
    assert (a["epoch"], a["global_step"], a["best"]) == (b["epoch"], b["global_step"], b["best"])
    assert a["scheduler"] == b["scheduler"]


class Terminal(io.StringIO):
    """A stderr that claims to be interactive."""

    def isatty(self) -> bool:
        return True


def test_stage1_resume_is_exact_and_stage2_starts_from_stage1(data, tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    monkeypatch.setattr(sys, "stderr", Terminal())  # LOGGER.PROGRESS_BAR (default on): bars on a terminal
    assert run(data, 1, full, *SHORT) == 0
    bars = sys.stderr.getvalue()
    assert "\r" in bars and "epoch 1" in bars and "valid lines" in bars and "test lines" in bars
    monkeypatch.undo()
    assert run(data, 1, part, *SHORT, "CKPT.STOP_AFTER_STEPS=9") == 0  # stops 3 steps into epoch 1
    last = part / "synthetic_s1" / "checkpoint.pth.tar"
    assert load_file(last)["iter_in_epoch"] == 3
    assert run(data, 1, part, *SHORT, cli=("--resume", str(last))) == 0
    assert_same_run(full / "synthetic_s1" / "checkpoint.pth.tar", last)
    assert (full / "synthetic_s1" / "model_best.pth.tar").is_file()
    evals = [json.loads(line) for line in (full / "synthetic_s1" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert len(evals) == 2 and {"map", "map_attr_mean", "map/colour", "map/sleeve_length"} <= set(evals[0])

    # stage 2 from the stage-1 checkpoint (weights only), then its own exact resume
    stage1 = str(full / "synthetic_s1" / "checkpoint.pth.tar")
    s2 = ("DATA.NUM_TRIPLETS=48", "SOLVER.LOG_PERIOD=1")
    assert run(data, 2, full, *s2, cli=("--resume", stage1)) == 0
    log = (full / "synthetic_s2" / "log.txt").read_text()
    assert f"{stage1}: 103 tensors loaded (asen); missing (fresh init kept): choices.local.basenet.* (90)" in log
    assert "parameter group global_and_attributes" in log and "lr 5e-05" in log
    assert run(data, 2, part, *s2, "CKPT.STOP_AFTER_STEPS=2", cli=("--resume", stage1)) == 0
    last2 = part / "synthetic_s2" / "checkpoint.pth.tar"
    assert run(data, 2, part, *s2, cli=("--resume", str(last2))) == 0
    assert_same_run(full / "synthetic_s2" / "checkpoint.pth.tar", last2)
    records = [json.loads(line) for line in (full / "synthetic_s2" / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {"global", "local", "align", "loss"} <= set(train[0])
    assert train[0]["loss"] == pytest.approx(train[0]["global"] + 0.1 * train[0]["local"] + 0.1 * train[0]["align"])

    # --test on the stage-2 checkpoint: table on stdout and a JSON report
    best = str(full / "synthetic_s2" / "model_best.pth.tar")
    out_json = tmp_path / "test.json"
    assert run(data, 2, full, cli=("--resume", best, "--test", "test", "--out", str(out_json))) == 0
    report = json.loads(out_json.read_text())
    assert report["options"]["split"] == "test" and report["options"]["embedding"] == "fused"
    assert set(report["per_attribute"]) == {"colour", "sleeve_length", "pattern"}
    assert 0 < report["metrics"]["map"] <= 100
    # a stage-1 checkpoint lacks the local branch: refused unless --allow-partial
    with pytest.raises(DataError, match=r"checkpoint\.pth\.tar: the file does not match this model.*--allow-partial"):
        run(data, 2, full, cli=("--resume", stage1, "--test", "TEST"))
    assert run(data, 2, full, cli=("--resume", stage1, "--test", "VALID", "--allow-partial",
                                   "--out", str(tmp_path / "partial.json"))) == 0

    # --embed: a folder of images for one attribute
    npz = tmp_path / "emb.npz"
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert run(data, 2, full, "LOGGER.PROGRESS_BAR=false",
               cli=("--resume", best, "--embed", str(data / "img" / "test"), "--attribute", "sleeve_length",
                    "--out", str(npz))) == 0
    assert sys.stderr.getvalue() == ""  # switched off: no bar
    monkeypatch.undo()
    emb = np.load(npz)
    assert emb["fused"].shape == (60, 512) and emb["box"].shape == (60, 3) and emb["attention"].shape == (60, 4, 4)
    assert str(emb["attribute"]) == "sleeve_length" and emb["paths"][0] == "000000.png"
    assert np.allclose(np.linalg.norm(emb["fused"], axis=1), 1, atol=1e-5)


def cli(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("FASHIONFINE_TRACEBACK", None)
    return subprocess.run([sys.executable, "asen_main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env)


def test_bad_input_is_one_line_with_exit_status_2(data, tmp_path):
    missing = cli(*tiny_args(data, 1, tmp_path, "DATA.DATASET=nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "filenames_train.txt: file not found" in missing.stderr
    assert "python -m datasets.synthetic asen --out data/synthetic" in missing.stderr

    bad = writable_copy(data, tmp_path / "asen")
    lines = (bad / "label_train.txt").read_text().splitlines()
    lines[4] = "4 1 7"
    (bad / "label_train.txt").write_text("\n".join(lines) + "\n")
    corrupt = cli(*tiny_args(bad, 1, tmp_path))
    assert corrupt.returncode == 2
    assert f"error: {bad / 'label_train.txt'}:5: value index 7 out of range [0, 3) for attribute 1" in corrupt.stderr

    nockpt = cli(*tiny_args(data, 2, tmp_path), "--resume", str(tmp_path / "none.pth.tar"), "--test", "TEST")
    assert nockpt.returncode == 2 and "--resume file not found" in nockpt.stderr and "none.pth.tar" in nockpt.stderr


def test_config_errors_name_the_key(data, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'SOLVER.LR'; valid keys in SOLVER: .*BASE_LR"):
        run(data, 1, tmp_path, "SOLVER.LR=1")
    with pytest.raises(ConfigError, match="MODEL.GLOBAL.BACKBONE.NAME' must be one of"):
        run(data, 1, tmp_path, "MODEL.GLOBAL.BACKBONE.NAME=vgg16")


def test_help_config_needs_no_cfg_and_the_help_example_is_a_valid_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        asen_main.main(["--help-config"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "SOLVER.BASE_LR: float = 0.0001  # lr (stage 1: all parameters; stage 2: the local branch)" in lines
    assert any(line.startswith("MODEL.LOCAL.BACKBONE.NAME: ") and "'resnet34'" in line for line in lines)
    with pytest.raises(SystemExit) as exit_:
        asen_main.main(["--help"])
    assert exit_.value.code == 0
    assert "SOLVER.BASE_LR=0.0001" in capsys.readouterr().out
    help_set = next(a.help for a in AsenTask.build_parser("")._actions if a.dest == "overrides")
    example = re.fullmatch(r"override config keys, e\.g\. --set (.*)", help_set).group(1).split()
    assert example and all(item.startswith("SOLVER.") for item in example)
    darn = [ROOT / "configs/asen/DARN/DARN.yaml", ROOT / "configs/asen/DARN/s1.yaml"]
    cfg = load_config(AsenConfig, darn, example)
    assert cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.EPOCHS == 2
    with pytest.raises(ConfigError, match="--cfg: give the YAML config file"):
        asen_main.main([])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_torchrun(data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "asen_main.py", *tiny_args(data, 2, tmp_path, "DATA.NUM_TRIPLETS=64", "SOLVER.LOG_PERIOD=2")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "\r" not in proc.stderr  # progress is on by default, but stderr is no terminal: no bar frames
    ckpt = load_file(tmp_path / "synthetic_s2" / "checkpoint.pth.tar")
    assert ckpt["global_step"] == 4 and ckpt["best"]["metric"] > 0  # 4 global batches of 16, split over 2 ranks
    assert "rank 0/2 on cpu (backend gloo)" in (tmp_path / "synthetic_s2" / "log.txt").read_text()

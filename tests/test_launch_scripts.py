"""The published shell scripts pass each flag once, with the environment's values, to the right entry point."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script_args(tmp_path: Path, script: str, env: dict[str, str], *extra: str) -> list[list[str]]:
    """The argument lists the script hands to Python (one per launched process), with a stand-in interpreter."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> {log}\nprintf "%s\\n" "--end--" >> {log}\n')
    fake.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ("OUTPUT_DIR", "CHECKPOINT", "DATA_ROOT", "TOKENIZER",
                                                                "CONFIG", "NGPU", "NNODES", "NODE_RANK",
                                                                "MASTER_ADDR", "MASTER_PORT")}
    subprocess.run(["bash", script, *extra], cwd=ROOT, check=True, env={**clean, "PYTHON": str(fake), "NGPU": "1", **env})
    calls, current = [], []
    for line in log.read_text().splitlines():
        if line == "--end--":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return calls


def value_of(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


@pytest.mark.parametrize("script,entry", [("pt.sh", "pretrain.py"), ("retrieval.sh", "retrieval.py"),
                                          ("tgir.sh", "tgir.py")])
def test_training_scripts_take_the_environment_once(tmp_path, script, entry):
    (args,) = script_args(tmp_path, script, {"OUTPUT_DIR": "out/x", "CHECKPOINT": "ck.pth", "DATA_ROOT": "d",
                                             "TOKENIZER": "t", "CONFIG": "c.yaml"}, "--set", "train.epochs=1")
    assert args[0] == entry
    assert value_of(args, "--output_dir") == ["out/x"]
    assert value_of(args, "--checkpoint") == ["ck.pth"]
    assert value_of(args, "--config") == ["c.yaml"]
    assert value_of(args, "--set") == ["data.root=d", "data.tokenizer=t", "train.epochs=1"]


def test_empty_checkpoint_means_none_and_defaults_apply(tmp_path):
    (args,) = script_args(tmp_path, "pt.sh", {"CHECKPOINT": ""})
    assert "--checkpoint" not in args
    assert "--output_dir" not in args  # the config's output_dir applies (output/FashionFINE_pt)
    assert value_of(args, "--config") == ["configs/pretrain.yaml"]


def test_blip_script_runs_both_stages_stage2_from_stage1(tmp_path):
    stage1, stage2 = script_args(tmp_path, "fashionfine_blip.sh", {"OUTPUT_DIR1": "o1", "OUTPUT_DIR2": "o2",
                                                                   "CHECKPOINT": "model_base.pth"})
    assert value_of(stage1, "--output_dir") == ["o1"] and value_of(stage2, "--output_dir") == ["o2"]
    assert value_of(stage1, "--checkpoint") == ["model_base.pth"]
    assert value_of(stage2, "--checkpoint") == ["o1/checkpoint_2.pth"]
    assert value_of(stage1, "--config") == ["configs/blip/retrieval_fashionfine_1.yaml"]
    assert value_of(stage2, "--config") == ["configs/blip/retrieval_fashionfine_2.yaml"]

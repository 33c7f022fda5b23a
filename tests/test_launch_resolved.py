"""Every published launch line resolves to the same config, output folder and weights as before the task
runner existed. `tests/data/launch_resolved.json` was written by the pre-runner code (commit 84c753f) from
the argument lists the launch scripts hand to Python and from the ASEN++ command lines of the published README.
The scripts' argument lists, output folders and default checkpoints were rewritten once since, deliberately,
when a script and its entry point started to share one output folder (pretraining in output/FashionFINE_pt,
fine-tuning from there, evaluations in eval_output_dir); the resolved configs are still the 84c753f ones.
Keys added since then must sit at their off value (None, False or an empty list), or at the value that
keeps the published behaviour (NEW_KEYS), so the published runs do not change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.config import config_from_args, config_to_dict
from tasks.asen import AsenTask
from tasks.fashiongen import PretrainTask, RetrievalTask
from tasks.fine_blip import FineBlipTask
from tasks.tgir import TGIRTask
from tests.test_launch_scripts import script_args

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "data" / "launch_resolved.json").read_text())
NEW_KEYS = {"LOGGER.PROGRESS_BAR": True,  # the published ASEN++ training shows a progress bar
            "eval_output_dir": "output/FashionFINE_TGIR_eval",  # the published eval_tgir.sh folder (tgir.yaml)
            "runtime.dist_timeout_s": 1800, "DIST.TIMEOUT_S": 1800,  # the published collective time-out (30 min)
            "runtime.stall_timeout_s": 300, "DIST.STALL_TIMEOUT_S": 300,  # a rank silent for 5 min stops the run
            "train.compile_mode": "default",  # only read with train.compile, which stays off (eager, as published)
            "eval.rerank_batch": 256}  # only read with eval.rerank_k, which stays 0 (no re-ranking, as published)
TASKS = {"pretrain.py": PretrainTask, "retrieval.py": RetrievalTask, "tgir.py": TGIRTask,
         "train_blip.py": FineBlipTask, "asen_main.py": AsenTask}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= flatten(value, f"{prefix}{key}.")
    return out


def resolve(argv: list[str]) -> dict[str, Any]:
    task = TASKS[argv[0]]
    args = task.build_parser("").parse_args(argv[1:])
    cfg = config_from_args(task.schema, args)
    request = task.make_request(args, cfg)
    return {"config": config_to_dict(cfg), "output_dir": str(request.output_dir), "checkpoint": request.checkpoint,
            "evaluate": request.evaluate}


def test_golden_covers_every_launch_script(tmp_path):
    scripts = ["pt.sh", "retrieval.sh", "tgir.sh", "eval_cmr.sh", "eval_TGIR.sh", "fashionfine_blip.sh",
               "eval_fashionfine_blip.sh"]
    calls = []
    for script in scripts:
        folder = tmp_path / script
        folder.mkdir()
        calls += script_args(folder, script, {})
    assert calls == [g["argv"] for g in GOLDEN if g["argv"][0] != "asen_main.py"]


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda g: " ".join(g["argv"][:3]))
def test_launch_line_resolves_as_before(golden):
    now = resolve(golden["argv"])
    assert_same_config(golden["config"], now["config"])
    assert now["output_dir"] == golden["output_dir"]
    for key in ("checkpoint", "evaluate"):
        if key in golden:
            assert now[key] == golden[key]


def assert_same_config(golden: dict[str, Any], now: dict[str, Any]) -> None:
    old, new = flatten(golden), flatten(now)
    assert {k: new.get(k, "<missing>") for k in old} == old
    added = {k: v for k, v in new.items() if k not in old}
    assert all(v in (None, False, []) or NEW_KEYS.get(k, "<unset>") == v for k, v in added.items()), added

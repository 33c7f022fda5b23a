"""Two gloo processes on CPU through torchrun and the legacy launcher: collectives and DDP training agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.distributed import get_rank, get_world_size, init_distributed, is_dist

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: list[str], out: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", *launcher, "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "tests" / "ddp_probe.py"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("launcher", [["torch.distributed.run"], ["torch.distributed.launch", "--use_env"]])
def test_two_process_gloo(tmp_path, launcher):
    r0, r1 = launch(launcher, tmp_path)
    assert (r0["world"], r0["backend"], r1["rank"]) == (2, "gloo", 1)
    assert r0["gathered"] == r1["gathered"] == [0, 1, 10, 11]
    # d/dx of sum_i i * gathered_i: rank 0 owns rows 0,1; rank 1 rows 2,3 (gradients summed over ranks: x2)
    assert r0["grad"] == [[0.0] * 3, [2.0] * 3] and r1["grad"] == [[4.0] * 3, [6.0] * 3]
    assert r0["broadcast"] == r1["broadcast"] == {"from": 0}
    # DDP keeps the replicas identical; the two ranks saw disjoint halves of each epoch.
    assert r0["digest"] == r1["digest"] and r0["steps"] == r1["steps"] == 8
    assert not set(r0["indices"]) & set(r1["indices"]) and len(r0["indices"]) == 32


def test_plain_python_is_world_size_one(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.backend, info.is_main) == (0, 1, None, True)
    assert not is_dist() and get_rank() == 0 and get_world_size() == 1

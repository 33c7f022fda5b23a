"""Several machines: two torchrun "nodes" of one gloo process each on localhost, started through
scripts/launch.sh (NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT), train exactly as one node with two processes;
the launch scripts' torchrun arguments, their one-line refusal and their exit status when Slurm stops a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.test_distributed import ROOT, free_port, launch
from tests.test_launch_scripts import script_args

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK",
               "NGPU")
TIMEOUT_S = 240


def node_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("PET_", "TORCHELASTIC_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def start_node(node_rank: int, port: int, out: Path, log: Path) -> subprocess.Popen:
    """One machine's torchrun agent (one worker), as the launch scripts start it."""
    env = node_env(NGPU="1", NNODES="2", NODE_RANK=str(node_rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with log.open("w") as sink:
        return subprocess.Popen(["bash", "-c", 'source scripts/launch.sh && launch "$@"', "launch",
                                 str(ROOT / "tests" / "ddp_probe.py"), str(out)],
                                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """End a node left running: SIGTERM to its agent (which ends its worker), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


@contextmanager
def two_nodes(out: Path) -> Iterator[list[dict]]:
    """Start the two nodes, yield (the caller runs something meanwhile), then their ranks' records."""
    out.mkdir()
    port = free_port()
    logs = [out / f"node{r}.log" for r in range(2)]
    nodes = [start_node(r, port, out, logs[r]) for r in range(2)]
    try:
        records: list[dict] = []
        yield records
        deadline = time.monotonic() + TIMEOUT_S
        for node in nodes:
            node.wait(timeout=max(1.0, deadline - time.monotonic()))
        codes = [node.returncode for node in nodes]
        assert codes == [0, 0], f"exit statuses {codes}\n" + "\n".join(log.read_text()[-3000:] for log in logs)
        records += [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    finally:
        for node in nodes:
            stop(node)


def test_two_nodes_on_localhost_train_as_one_node_with_two_processes(tmp_path):
    with two_nodes(tmp_path / "two_nodes") as two:  # the one-node run goes meanwhile
        one = launch(["torch.distributed.run"], tmp_path / "one_node")
    assert [r["local_rank"] for r in two] == [0, 0] and [r["local_rank"] for r in one] == [0, 1]  # really 2 nodes
    for a, b in zip(two, one):
        assert (a["rank"], a["world"], a["backend"]) == (b["rank"], b["world"], b["backend"])
        assert a["gathered"] == b["gathered"] == [0, 1, 10, 11] and a["grad"] == b["grad"]
        assert a["broadcast"] == b["broadcast"] == {"from": 0}
        assert (a["digest"], a["steps"], a["indices"]) == (b["digest"], b["steps"], b["indices"])
    assert two[0]["digest"] == two[1]["digest"] and two[0]["steps"] == 8
    assert not set(two[0]["indices"]) & set(two[1]["indices"]) and len(two[0]["indices"]) == 32


def test_launch_scripts_pass_the_nodes_to_torchrun(tmp_path):
    env = {"NGPU": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500",
           "CHECKPOINT": ""}
    (tmp_path / "nodes").mkdir()
    (tmp_path / "single").mkdir()
    (args,) = script_args(tmp_path / "nodes", "pt.sh", env, "--resume", "auto")
    assert args[:7] == ["-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1", "--master_addr=node0",
                        "--nproc_per_node=8", "--master_port=29500"]
    assert args[7:] == ["pretrain.py", "--config", "configs/pretrain.yaml", "--resume", "auto"]
    (single,) = script_args(tmp_path / "single", "pt.sh", {"NGPU": "2", "NNODES": "", "CHECKPOINT": ""})
    assert single == ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=47689", "pretrain.py",
                      "--config", "configs/pretrain.yaml"]


def test_several_nodes_need_node_rank_and_master_addr():
    for missing in ("NODE_RANK", "MASTER_ADDR"):
        env = node_env(NGPU="1", NNODES="2", NODE_RANK="0", MASTER_ADDR="node0", PYTHON="/bin/false")
        del env[missing]
        proc = subprocess.run(["bash", "pt.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.startswith("error: NNODES=2 needs NODE_RANK") and proc.stderr.count("\n") == 1


def test_a_stopped_launch_ends_143_though_torchrun_reports_1(tmp_path):
    """Slurm's --signal reaches every process of the step: the launch shell waits for torchrun (which ends with 1
    once its workers have checkpointed) and ends with 143, the status a job script requeues on; other statuses
    pass through."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\n[ -n "$FAKE_STATUS" ] && exit "$FAKE_STATUS"\ntrap "exit 1" TERM\n'
                    f"touch {tmp_path}/started\nsleep 30 & wait\n")
    fake.chmod(0o755)
    env = node_env(PYTHON=str(fake), NGPU="2", FAKE_STATUS="")
    cmd = ["bash", "-c", 'source scripts/launch.sh && launch "$@"', "launch", "pretrain.py"]
    assert subprocess.run(cmd, cwd=ROOT, env={**env, "FAKE_STATUS": "3"}, timeout=20).returncode == 3
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        end = time.monotonic() + 20
        while not (tmp_path / "started").exists() and time.monotonic() < end:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 143
    finally:
        stop(proc)

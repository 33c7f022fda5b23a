"""Faults during training on the toy task of tests/engine_toy.py: divergence is caught in the step where it
appears and never saved, config changes on --resume take effect or are refused, SIGTERM/SIGINT stop with a
checkpoint that resumes bit for bit, a stopped or killed rank ends the run with one line naming it, and a
killed torchrun agent takes its workers with it. Trainer-level cases run in-process; a subprocess only where
the behaviour is the process's (exit status, signals, kill)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import asen_main
from engine.checkpoint import load_file, save_checkpoint
from engine.errors import NonFiniteError, RunError
from engine.resume_check import check_resume_config
from engine.signals import Interrupted
from engine.trainer import StepContext
from models.losses import sample_hard_negatives
from tests.asen_helpers import synthetic_asen, tiny_args
from tests.engine_toy import ToyModel, run_toy
from tests.test_trainer import assert_same_state

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "ddp_probe.py"


class NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * float("nan")


class FaultyToy(ToyModel):
    """The toy model with a fault at the given 1-based steps (the `step` of log.jsonl)."""

    def __init__(self, kind: str, steps: set[int]) -> None:
        super().__init__()
        self.kind, self.steps = kind, steps
        self.register_buffer("running", torch.zeros(2))  # like BatchNorm statistics: written by the forward

    def forward(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        out = super().forward(batch, ctx)
        if ctx.global_step + 1 in self.steps:
            if self.kind == "loss":
                out["mse"] = out["mse"] * float("nan")
            elif self.kind == "grad":
                out["reg"] = NanGradient.apply(out["reg"])
            elif self.kind == "similarity":  # the retrieval models' hard-negative sampling on diverged features
                sample_hard_negatives(torch.full((4, 4), float("inf")))
            elif self.kind == "buffer":
                self.running.fill_(float("nan"))
                out["mse"] = out["mse"] * float("nan")
        return out


def records(folder: Path, kind: str = "train") -> list[dict]:
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# ----------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("kind,steps,allowed,message", [
    ("loss", {6}, 0, "non-finite loss (mse nan, reg "),
    ("grad", {6}, 0, "non-finite gradient norm (mse "),
    ("similarity", {6}, 0, "non-finite similarities (NaN or inf) before hard-negative sampling"),
    ("loss", {2, 3, 6}, 2, "2 non-finite step(s) skipped before"),
    ("buffer", {6}, 2, "the forward left non-finite values in the model (running), which skipping the step cannot"),
])
def test_a_nonfinite_step_stops_the_run_before_anything_is_saved(tmp_path, kind, steps, allowed, message):
    with pytest.raises(NonFiniteError) as caught:
        run_toy(tmp_path, model=FaultyToy(kind, steps), train={"checkpoint_every": 4, "skip_nonfinite_steps": allowed})
    text = str(caught.value)
    assert "\n" not in text and text.startswith("training diverged at epoch 0, step 6 (iteration 6/8): ")
    assert message in text
    assert f"the last checkpoint on disk, {tmp_path / 'checkpoint_last.pth'}, is intact" in text
    last = load_file(tmp_path / "checkpoint_last.pth")
    assert last["global_step"] == 4 and last["extra"]["skipped_steps"] == len(steps) - 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_a_too_high_learning_rate_is_caught_where_it_diverges(tmp_path):
    """optim.lr=1e3: the weights blow up after a few updates; the step whose gradient overflows stops the run."""
    with pytest.raises(NonFiniteError, match=r"training diverged at epoch 0, step 7 .*non-finite gradient norm "
                                             r"\(mse .*grad_norm inf\).*checkpoint_last.pth, is intact"):
        run_toy(tmp_path, lr=1e3, train={"checkpoint_every": 4})
    assert load_file(tmp_path / "checkpoint_last.pth")["global_step"] == 4


def test_skipped_steps_leave_the_weights_alone_and_are_counted_across_a_resume(tmp_path):
    faulty = {"steps": {3, 10}, "kind": "loss"}
    train = {"skip_nonfinite_steps": 2}
    part, _ = run_toy(tmp_path / "run", model=FaultyToy(**faulty), stop_after_steps=5, train=train)
    assert part.skipped_steps == 1 and load_file(tmp_path / "run" / "checkpoint_last.pth")["extra"]["skipped_steps"] == 1
    resumed, result = run_toy(tmp_path / "run", model=FaultyToy(**faulty), train=train,
                              resume=str(tmp_path / "run" / "checkpoint_last.pth"))
    assert result.global_step == 24 and resumed.skipped_steps == 2
    train_records = records(tmp_path / "run")
    assert [r["step"] for r in train_records] == [4, 8, 12, 16, 20, 24]  # each step once after the resume
    assert [r["skipped_steps"] for r in train_records] == [1, 1, 2, 2, 2, 2]
    assert "skipping epoch 1, step 10 (iteration 2/8): non-finite loss" in (tmp_path / "run" / "log.txt").read_text()
    # a skipped step: no optimizer step, no gradients left behind
    before = {k: v.clone() for k, v in resumed.module.state_dict().items()}
    resumed.module.steps, resumed.cfg.skip_nonfinite_steps = {25}, 3
    batch = next(iter(resumed.loader))
    assert resumed.train_step(batch, StepContext(3, 0, 8, 24)) is None
    assert_same_state(before, resumed.module.state_dict())
    assert all(p.grad is None for p in resumed.module.parameters())


def test_asen_divergence_stops_with_one_line(tmp_path, tmp_path_factory):
    """ASEN++ runs the same trainer: SOLVER.BASE_LR=1e20 overflows after the first update (at 1e3 its BatchNorm'd,
    cosine-bounded model stays finite and trains on: nothing diverges numerically)."""
    data = synthetic_asen(tmp_path_factory)
    argv = tiny_args(data, 1, tmp_path, "SOLVER.BASE_LR=1e20", "DATA.NUM_TRIPLETS=96", "SOLVER.EPOCHS=1",
                     "CKPT.EVERY_ITERS=1", "SOLVER.SKIP_NONFINITE_STEPS=0")
    with pytest.raises(NonFiniteError) as caught:
        asen_main.main(argv)
    last = tmp_path / "synthetic_s1" / "checkpoint.pth.tar"
    assert str(caught.value).startswith("training diverged at epoch 0, step 2 (iteration 2/6): non-finite loss "
                                        "(global nan, total nan); nothing was saved after it: the last checkpoint on "
                                        f"disk, {last}, is intact")
    assert load_file(last)["global_step"] == 1


# ----------------------------------------------------------------------------- config changed on --resume
@pytest.mark.parametrize("old,new,refused", [
    ({"optim": {"lr": 1e-4}}, {"optim": {"lr": 1e-3}}, "optim.lr: 0.0001 -> 0.001"),
    ({"train": {"epochs": 3}}, {"train": {"epochs": 5}}, "train.epochs: 3 -> 5"),
    ({"SOLVER": {"BASE_LR": 1e-4}}, {"SOLVER": {"BASE_LR": 1e3}}, "SOLVER.BASE_LR: 0.0001 -> 1000.0"),
    ({"DIST": {"BATCH_MODE": "global"}}, {"DIST": {"BATCH_MODE": "per_rank"}}, "DIST.BATCH_MODE: 'global' -> "),
    ({"train": {"stop_after_steps": 5, "checkpoint_every": 0, "report_to": []}, "output_dir": "a",
      "runtime": {"num_workers": 4, "cpu_threads": None}, "data": {"root": "/old", "tokenizer": "t"}},
     {"train": {"stop_after_steps": None, "checkpoint_every": 9, "report_to": ["tensorboard"]}, "output_dir": "b",
      "runtime": {"num_workers": 0, "cpu_threads": 1}, "data": {"root": "/new", "tokenizer": "u"}}, None),
    ({"CKPT": {"STOP_AFTER_STEPS": 9, "EVERY_ITERS": 0}, "LOGGER": {"LEVEL": "INFO"}, "SAVE_DIR": "a",
      "DATA": {"NUM_WORKERS": 4, "BASE_PATH": "x"}, "CPU_THREADS": None},
     {"CKPT": {"STOP_AFTER_STEPS": None, "EVERY_ITERS": 5}, "LOGGER": {"LEVEL": "DEBUG"}, "SAVE_DIR": "b",
      "DATA": {"NUM_WORKERS": 0, "BASE_PATH": "y"}, "CPU_THREADS": 2}, None),
    ({"optim": {"lr": 1e-4}}, {"optim": {"lr": 1e-4}, "runtime": {"dist_timeout_s": 60}}, None),  # key added since
])
def test_a_changed_key_takes_effect_or_is_refused(old, new, refused):
    if refused is None:
        check_resume_config(old, new, "ck.pth")
        return
    with pytest.raises(RunError) as caught:
        check_resume_config(old, new, "ck.pth")
    assert refused in str(caught.value) and "--checkpoint ck.pth" in str(caught.value)


def test_resume_refuses_a_changed_learning_rate_and_another_world_size(tmp_path):
    run_toy(tmp_path / "run", stop_after_steps=5)
    last = tmp_path / "run" / "checkpoint_last.pth"
    with pytest.raises(RunError, match=r"cannot resume .* with a changed config: optim.lr: 0.01 -> 0.02; .*"
                                       r"start a new run from its weights \(--checkpoint "):
        run_toy(tmp_path / "run", lr=0.02, resume=str(last))
    obj = load_file(last)
    assert obj["extra"]["world_size"] == 1
    obj["extra"]["world_size"] = 2
    save_checkpoint(tmp_path / "two.pth", obj)
    with pytest.raises(RunError, match=r"on 1 process\(es\): it was written by a run of 2, and the data order"):
        run_toy(tmp_path / "run2", resume=str(tmp_path / "two.pth"))


# ----------------------------------------------------------------------------- processes
def probe_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("TORCHELASTIC")}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the in-process runs' threads (bit-exact comparison)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_probe(out: Path, *, delay: float = 0.01, timeout_s: float = 30, epochs: int = 3, env: dict | None = None,
                launcher: tuple[str, ...] = (), stall_s: float = 0) -> subprocess.Popen:
    cmd = [sys.executable, *launcher, str(PROBE), str(out), "train", str(epochs), str(delay), str(timeout_s),
           str(stall_s)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env or probe_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_for_training(out: Path, procs: list[subprocess.Popen], limit: float = 60, checkpoint: bool = False) -> None:
    """Until rank 0 has logged a train record (the run is mid-epoch) and, with `checkpoint`, has written its first
    checkpoint (the first train record can be the end-of-epoch one, logged before the epoch's checkpoint)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if ((out / "log.jsonl").is_file() and '"train"' in (out / "log.jsonl").read_text()
                and (not checkpoint or (out / "checkpoint_last.pth").is_file())):
            return
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    raise AssertionError("no train record")


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not warnings of Python or torch."""
    return [line for line in stderr.splitlines() if line.strip() and "Warning:" not in line
            and not line.startswith("  ")]


class SignalsItself(ToyModel):
    """Sends its own process a signal during the forward of one step (deterministic, in-process)."""

    def __init__(self, sig: int, step: int) -> None:
        super().__init__()
        self.sig, self.step = sig, step

    def forward(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        if ctx.global_step + 1 == self.step:
            os.kill(os.getpid(), self.sig)
        return super().forward(batch, ctx)


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as caught:
        run_toy(tmp_path, model=SignalsItself(signal.SIGINT, 11))
    last = tmp_path / "checkpoint_last.pth"
    assert caught.value.exit_status == 130 and str(caught.value) == (
        f"stopped by SIGINT at epoch 1, iteration 3/8 (step 11); checkpoint written: {last}; continue with "
        f"--resume {last}")
    assert load_file(last)["global_step"] == 11 and signal.getsignal(signal.SIGINT) is before
    assert [r["step"] for r in records(tmp_path)] == [4, 8]


def test_sigterm_exits_143_with_a_checkpoint_that_resumes_bit_for_bit(tmp_path):
    out = tmp_path / "run"
    proc = start_probe(out)
    wait_for_training(out, [proc])
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    last = out / "checkpoint_last.pth"
    stopped = load_file(last)
    step, epoch, it = stopped["global_step"], stopped["epoch"], stopped["iter_in_epoch"]
    assert error_lines(stderr) == [f"stopped by SIGTERM at epoch {epoch}, iteration {it}/8 (step {step}); checkpoint "
                                   f"written: {last}; continue with --resume {last}"]
    assert 4 <= step < 24 and step == 8 * epoch + it
    full, _ = run_toy(tmp_path / "full")
    resumed, result = run_toy(out, resume=str(last))  # in the same folder: log.jsonl keeps each step once
    assert result.global_step == 24
    assert_same_state(full.module.state_dict(), resumed.module.state_dict())
    assert [r["step"] for r in records(out)] == [r["step"] for r in records(tmp_path / "full")]
    assert [r["epoch"] for r in records(out, "eval")] == [0, 1, 2]


def test_a_second_ctrl_c_aborts_at_once(tmp_path):
    out = tmp_path / "run"
    proc = start_probe(out, delay=0.1)  # 0.8 s per step
    wait_for_training(out, [proc])
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGINT and time.monotonic() - sent < 0.7


FAULTS = {"stop": signal.SIGSTOP, "kill": signal.SIGKILL, "term": signal.SIGTERM, "stall": signal.SIGSTOP}
STALL_TIMEOUT_S = 8  # runtime.dist_timeout_s of the SIGSTOP run (room for a slow start on a busy machine)
WATCHDOG_S = 3  # runtime.stall_timeout_s of the "stall" run, whose collectives would wait 120 s


def start_ranks(out: Path, timeout_s: float, stall_s: float = 0) -> list[subprocess.Popen]:
    """Two gloo ranks of the toy training (rank 0 hosts the store)."""
    env = probe_env() | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
                         "OMP_NUM_THREADS": "1"}
    return [start_probe(out, delay=0.02, timeout_s=timeout_s, epochs=20, env=env | {"RANK": str(r)},
                        stall_s=stall_s) for r in range(2)]


def test_a_stopped_killed_or_signalled_rank_ends_the_run_with_one_line(tmp_path):
    """Rank 1 SIGSTOPped (a hung node: rank 0 gives up after runtime.dist_timeout_s and names it), SIGKILLed
    (the run ends within seconds, naming it), SIGSTOPped under the heartbeat watchdog (runtime.stall_timeout_s:
    rank 0 stops long before its collective would time out) or SIGTERMed (both ranks stop at the same step,
    exit 143). The four two-rank runs go at once (their start-up and time-outs overlap)."""
    runs = {fault: start_ranks(tmp_path / fault, STALL_TIMEOUT_S if fault == "stop" else 120,
                               WATCHDOG_S if fault == "stall" else 0) for fault in FAULTS}
    results = {}
    try:
        for fault, ranks in runs.items():
            wait_for_training(tmp_path / fault, ranks, checkpoint=True)  # the message names an intact checkpoint
            os.kill(ranks[1].pid, FAULTS[fault])
            results[fault] = time.monotonic()
        for fault, ranks in runs.items():
            _, stderr = ranks[0].communicate(timeout=60)
            results[fault] = (time.monotonic() - results[fault], error_lines(stderr))
    finally:
        for p in (p for ranks in runs.values() for p in ranks):
            if p.poll() is None:
                p.kill()
            p.communicate()
    for fault in ("stop", "kill"):
        took, lines = results[fault]
        assert runs[fault][0].returncode == 2 and len(lines) == 1, (fault, lines)
        assert lines[0].startswith("error: rank 0, epoch ") and "lost rank 1 (last heartbeat at step " in lines[0]
        assert "it stopped heartbeating and the collective failed (" in lines[0], lines[0]
        assert f"{tmp_path / fault / 'checkpoint_last.pth'}, is intact: once every rank is back, resume" in lines[0]
        assert took < (STALL_TIMEOUT_S + 10 if fault == "stop" else 10), (fault, took)
    assert "Timed out" in results["stop"][1][0]
    took, lines = results["stall"]  # the heartbeat watchdog, long before the collective would time out
    assert runs["stall"][0].returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: rank 0 at step ") and ": rank 1 has not answered for " in lines[0], lines[0]
    assert "(runtime.stall_timeout_s 3 s)" in lines[0] and took < WATCHDOG_S + 10, (took, lines[0])
    took, lines = results["term"]
    assert [p.returncode for p in runs["term"]] == [143, 143] and len(lines) == 1, lines
    assert lines[0].startswith("stopped by SIGTERM (sent to another rank) at epoch ")
    assert load_file(tmp_path / "term" / "checkpoint_last.pth")["extra"]["world_size"] == 2


def test_killing_the_torchrun_agent_stops_its_worker(tmp_path):
    out = tmp_path / "run"
    agent = start_probe(out, delay=0.05, epochs=50, launcher=(
        "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}"))
    try:
        wait_for_training(out, [agent])
        children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        assert len(children) == 1
        worker = int(children[0])
        agent.kill()
        agent.wait()
        end = time.monotonic() + 10
        while time.monotonic() < end and worker_alive(worker):
            time.sleep(0.1)
        assert not worker_alive(worker)
        assert "the torchrun agent (pid " in agent.stderr.read()
    finally:
        if agent.poll() is None:
            agent.kill()


def worker_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")

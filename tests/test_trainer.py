"""The shared training loop: exact resume, checkpoints, logs, selection."""

from __future__ import annotations

import json

import pytest
import torch

from engine.atomic import torch_save
from engine.checkpoint import load_file
from tests.engine_toy import run_toy


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def optimizer_tensors(state: dict) -> list[torch.Tensor]:
    return [t for s in state["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("stop_at,workers", [(13, 0), (8, 2)])
def test_interrupted_and_resumed_run_matches_uninterrupted_bit_for_bit(tmp_path, stop_at, workers):
    full, full_result = run_toy(tmp_path / "full", num_workers=workers)
    part, part_result = run_toy(tmp_path / "part", stop_after_steps=stop_at, num_workers=workers)
    assert part_result.interrupted and part_result.global_step == stop_at
    last = tmp_path / "part" / "checkpoint_last.pth"
    resumed, resumed_result = run_toy(tmp_path / "resumed", resume=str(last), num_workers=workers)
    assert resumed_result.global_step == full_result.global_step == 24
    assert_same_state(full.module.state_dict(), resumed.module.state_dict())
    for a, b in zip(optimizer_tensors(full.optimizer.state_dict()), optimizer_tensors(resumed.optimizer.state_dict())):
        assert torch.equal(a, b)
    assert full.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]
    assert resumed_result.best_epoch == full_result.best_epoch
    assert resumed_result.best_metric == full_result.best_metric


def test_training_learns_and_writes_logs_and_checkpoints(tmp_path):
    trainer, result = run_toy(tmp_path, epochs=4)
    assert not result.interrupted
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r["neg_mse"] for r in lines if r["kind"] == "eval"]
    assert evals[-1] > evals[0] + 0.5 and result.last_metrics["neg_mse"] == evals[-1]
    train = [r for r in lines if r["kind"] == "train"]
    assert {"mse", "reg", "loss", "lr", "grad_norm"} <= set(train[0])
    assert train[0]["loss"] == pytest.approx(train[0]["mse"] + 0.5 * train[0]["reg"], rel=1e-6)
    epochs = [r for r in lines if r["kind"] == "train_epoch"]
    assert len(epochs) == 4 and epochs[-1]["mse"] < epochs[0]["mse"]
    assert [r["epoch"] for r in lines if r["kind"] == "eval"] == [0, 1, 2, 3]
    assert "epoch 3 evaluation: neg_mse" in (tmp_path / "log.txt").read_text()
    best = load_file(tmp_path / "checkpoint_best.pth")
    last = load_file(tmp_path / "checkpoint_last.pth")
    assert last["epoch"] == 4 and last["iter_in_epoch"] == 0 and last["global_step"] == 32
    assert best["best"]["epoch"] == result.best_epoch
    assert set(last) >= {"model", "optimizer", "scheduler", "rng", "config", "epoch", "global_step"}


def test_resume_refuses_a_weights_only_file(tmp_path):
    torch_save(tmp_path / "weights.pth", {"model": {"w": torch.zeros(1)}})
    with pytest.raises(RuntimeError, match="not a resumable training checkpoint"):
        run_toy(tmp_path / "run", resume=str(tmp_path / "weights.pth"))


def test_torch_save_leaves_no_partial_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    torch_save(tmp_path / "ck.pth", {"a": 1})
    with pytest.raises(RuntimeError, match="boom"):
        torch_save(tmp_path / "ck.pth", {"a": Boom()})
    assert torch.load(tmp_path / "ck.pth") == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth"]


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pth"):
        load_file(tmp_path / "nope.pth")

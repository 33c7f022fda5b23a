"""Engine options the BLIP variant uses: one weight decay over all parameters (`optim.decay_all`), a schedule
longer than the run (`train.schedule_epochs`, compat `blip_stage1_schedule`), and the published configs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from engine.config import ConfigError, load_config
from engine.optim import build_optimizer, build_param_groups, build_scheduler
from engine.sections import OptimConfig, ScheduleConfig
from tasks.blip_schema import BlipRetrievalConfig
from tasks.compat import CompatConfig
from tasks.fine_blip import resolve_schedule
from tests.blip_helpers import ROOT


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.temp = nn.Parameter(torch.tensor(0.07))


def decay_of(cfg: OptimConfig) -> dict[str, float]:
    return {n: g["weight_decay"] for g in build_param_groups(Net().named_parameters(), cfg) for n in g["param_names"]}


def test_decay_all_decays_biases_and_norms_scalars_follow_decay_scalars():
    assert decay_of(OptimConfig(weight_decay=0.05, decay_all=True)) == {
        "enc.weight": 0.05, "enc.bias": 0.05, "norm.weight": 0.05, "norm.bias": 0.05, "temp": 0.0}
    assert decay_of(OptimConfig(weight_decay=0.05, decay_all=True, decay_scalars=True))["temp"] == 0.05
    assert decay_of(OptimConfig(weight_decay=0.05, decay_all=True, no_decay_names=["norm.bias"]))["norm.bias"] == 0.0
    default = decay_of(OptimConfig(weight_decay=0.05))
    assert default["enc.bias"] == default["norm.weight"] == default["temp"] == 0.0 and default["enc.weight"] == 0.05


def blip_lrs(epochs: int, schedule_epochs: int, lr: float = 25e-6) -> list[float]:
    """Per-epoch lr of the BLIP schedule (cosine set per epoch, no warm-up, min_lr 0)."""
    opt = build_optimizer(Net(), OptimConfig(lr=lr))
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", interval="epoch", warmup_unit="epochs"), lr,
                            schedule_epochs, 7)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_blip_cosine_per_epoch_matches_the_published_formula():
    lr = 25e-6
    published = [0.5 * lr * (1 + math.cos(math.pi * e / 20)) for e in range(5)]
    assert blip_lrs(5, 20) == pytest.approx(published)  # stage 1 compat: 5 epochs of a 20-epoch cosine
    assert blip_lrs(5, 5)[-1] == pytest.approx(0.5 * lr * (1 + math.cos(math.pi * 4 / 5)))


def test_stage1_schedule_compat_and_fixed():
    cfg = load_config(BlipRetrievalConfig, [ROOT / "configs/blip/retrieval_fashionfine_1.yaml"])
    assert (cfg.train.epochs, cfg.train.schedule_epochs, cfg.optim.lr) == (5, 20, 25e-6)
    assert resolve_schedule(cfg).train.schedule_epochs is None  # fixed: the cosine spans the 5 epochs
    compat = dataclasses.replace(cfg, compat=CompatConfig(blip_stage1_schedule="compat"))
    assert resolve_schedule(compat).train.schedule_epochs == 20
    with pytest.raises(ConfigError, match="schedule_epochs"):
        load_config(BlipRetrievalConfig, [ROOT / "configs/blip/retrieval_fashionfine_1.yaml"],
                    ["train.schedule_epochs=3"])


def test_published_configs():
    one, two, ev = (load_config(BlipRetrievalConfig, [ROOT / f"configs/blip/retrieval_fashionfine_{n}.yaml"])
                    for n in ("1", "2", "eval"))
    assert (one.model.stage, one.data.train_annotation, one.data.test_annotation) == (
        1, "fashiongen_train_symbol.json", "fashiongen_test_symbol.json")
    assert one.checkpoint == "model_base.pth" and one.train.keep_epoch_checkpoints
    assert one.train.epoch_checkpoint_name.format(epoch=2) == "checkpoint_2.pth"  # the published names
    assert (two.model.stage, two.train.epochs, two.optim.lr, two.data.train_annotation) == (
        2, 20, 1e-5, "fashiongen_train.json")
    assert two.checkpoint.endswith("retrieval_fashionfine_fashiongen_ft_1/checkpoint_2.pth")
    for cfg in (one, two, ev):
        assert (cfg.data.batch_size, cfg.data.eval_batch_size, cfg.eval.k_test) == (8, 64, 256)
        assert (cfg.optim.weight_decay, cfg.optim.decay_all, cfg.schedule.min_lr) == (0.05, True, 0.0)
        assert (cfg.model.momentum, cfg.model.temp_init, cfg.model.embed_dim, cfg.loss.distill_alpha) == (
            0.995, 0.07, 256, 0.4)
        assert (cfg.loss.focal.alpha, cfg.loss.focal.gamma, cfg.runtime.seed) == (0.25, 2.0, 42)
        assert cfg.model.queue_size % (8 * 4) == 0
    assert ev.checkpoint == "./fashionfine_blip_3modules.pth" and ev.compat.mode == "compat"
    assert ev.eval.protocol == "both"

"""Parameter groups and learning-rate schedules at chosen steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.config import ConfigError, build_config, load_config
from engine.optim import build_optimizer, build_param_groups, build_scheduler, warmup_cosine_factor
from engine.sections import OptimConfig, ScheduleConfig


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def groups_by_name(groups):
    return {g["name"]: (sorted(g["param_names"]), g["lr"], g["weight_decay"]) for g in groups}


def test_decay_and_no_decay_groups():
    groups = groups_by_name(build_param_groups(Net().named_parameters(), OptimConfig(lr=1e-3, weight_decay=0.02)))
    assert groups["default"] == (["enc.weight", "head.weight"], 1e-3, 0.02)
    assert groups["default/no_decay"][0] == ["enc.bias", "head.bias", "norm.bias", "norm.weight", "temp"]
    assert groups["default/no_decay"][2] == 0.0
    assert not any("frozen" in n for names, _, _ in groups.values() for n in names)


def test_published_scalar_decay_and_per_group_lr():
    cfg = OptimConfig(lr=1e-4, weight_decay=0.3, decay_scalars=True, group_lr={"head": 1e-5})
    groups = groups_by_name(build_param_groups(Net().named_parameters(), cfg))
    assert "temp" in groups["default"][0]
    assert groups["head"] == (["head.weight"], 1e-5, 0.3)
    assert groups["head/no_decay"] == (["head.bias"], 1e-5, 0.0)


def test_named_groups_come_first_in_their_order_with_their_own_lr():
    tree = {"lr": 1e-3, "decay_all": True, "groups": [
        {"name": "late", "prefixes": ["enc.", "norm."], "lr": 1e-5},
        {"name": "scaled", "prefixes": ["head.bias"], "lr_scale": 0.5}], "group_lr": {"head.": 2e-4}}
    cfg = build_config(OptimConfig, tree)
    groups = build_param_groups(Net().named_parameters(), cfg)
    # named groups first, then the others by their first parameter (the module's own `temp` comes first)
    assert [g["name"] for g in groups] == ["late", "scaled", "default/no_decay", "head."]
    assert groups_by_name(groups)["late"] == (["enc.bias", "enc.weight", "norm.bias", "norm.weight"], 1e-5, 0.0)
    assert groups_by_name(groups)["scaled"][:2] == (["head.bias"], 0.5e-3)  # longest prefix wins over "head."
    assert groups_by_name(groups)["head."][:2] == (["head.weight"], 2e-4)
    assert groups_by_name(groups)["default/no_decay"][0] == ["temp"]  # 0-dim: decay_scalars is off
    with pytest.raises(ValueError, match=r"match no trainable parameter: \['dec.'\]"):
        build_param_groups(Net().named_parameters(), build_config(OptimConfig, {"groups": [
            {"name": "x", "prefixes": ["enc.", "dec."]}]}))
    with pytest.raises(ConfigError, match="need a name and at least one prefix"):
        build_config(OptimConfig, {"groups": [{"name": "x"}]})


def test_unmatched_group_prefix_is_an_error():
    with pytest.raises(ValueError, match="match no trainable parameter"):
        build_param_groups(Net().named_parameters(), OptimConfig(group_lr={"decoder": 1e-5}))


def lrs_over(scheduler, optimizer, ticks):
    out = []
    for _ in range(ticks):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_with_step_warmup_values():
    opt = build_optimizer(Net(), OptimConfig(lr=1e-4))
    cfg = ScheduleConfig(name="cosine", interval="step", warmup=10, warmup_lr=1e-6, min_lr=1e-6)
    sched = build_scheduler(opt, cfg, base_lr=1e-4, epochs=2, iters_per_epoch=60)
    lrs = lrs_over(sched, opt, 121)
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[5] == pytest.approx(1e-6 + 0.5 * (1e-4 - 1e-6))
    assert lrs[10] == pytest.approx(1e-4)
    mid = 10 + 55  # half-way through the 110 cosine steps
    assert lrs[mid] == pytest.approx(1e-6 + 0.5 * (1e-4 - 1e-6))
    assert lrs[120] == pytest.approx(1e-6)
    assert all(a >= b - 1e-15 for a, b in zip(lrs[10:], lrs[11:]))


def test_warmup_in_epochs_and_group_scaling():
    opt = build_optimizer(Net(), OptimConfig(lr=1e-4, group_lr={"head": 1e-5}))
    cfg = ScheduleConfig(warmup=1, warmup_unit="epochs", warmup_lr=0.0, min_lr=0.0)
    sched = build_scheduler(opt, cfg, base_lr=1e-4, epochs=3, iters_per_epoch=4)
    for _ in range(2):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["default"] == pytest.approx(0.5e-4) and lrs["head"] == pytest.approx(0.5e-5)


def test_per_epoch_cosine_matches_formula():
    opt = build_optimizer(Net(), OptimConfig(lr=1e-5))
    cfg = ScheduleConfig(interval="epoch", min_lr=1e-6)
    sched = build_scheduler(opt, cfg, base_lr=1e-5, epochs=30, iters_per_epoch=100)
    lrs = lrs_over(sched, opt, 30)
    for k in (0, 7, 15, 29):
        assert lrs[k] == pytest.approx(1e-6 + 0.5 * (1e-5 - 1e-6) * (1 + math.cos(math.pi * k / 30)))


def test_step_decay():
    opt = build_optimizer(Net(), OptimConfig(name="adam", lr=1e-4))
    sched = build_scheduler(opt, ScheduleConfig(name="step", interval="epoch", step_size=3, gamma=0.9),
                            base_lr=1e-4, epochs=50, iters_per_epoch=10)
    lrs = lrs_over(sched, opt, 10)
    assert lrs[2] == pytest.approx(1e-4) and lrs[3] == pytest.approx(0.9e-4) and lrs[9] == pytest.approx(0.729e-4)
    assert isinstance(opt, torch.optim.Adam)


def test_factor_edges():
    assert warmup_cosine_factor(0, 100, 0, 0.0, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_factor(100, 100, 0, 0.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(500, 100, 0, 0.0, 0.1) == pytest.approx(0.1)


def test_schedule_config_from_yaml_rejects_bad_combo(tmp_path):
    opt = build_optimizer(Net(), OptimConfig())
    cfg = load_config(ScheduleConfig, [], ["name=step", "interval=step"])
    with pytest.raises(ValueError, match="decays per epoch"):
        build_scheduler(opt, cfg, 1e-4, 1, 1)


def test_albef_cosine_reproduces_the_published_schedule():
    opt = build_optimizer(Net(), OptimConfig(lr=6e-5))
    cfg = ScheduleConfig(name="albef_cosine", warmup=5, warmup_lr=1e-5, min_lr=1e-5)
    sched = build_scheduler(opt, cfg, base_lr=6e-5, epochs=10, iters_per_epoch=1000)
    lrs = lrs_over(sched, opt, 4000)
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-5)
    assert lrs[100] == pytest.approx(2e-5) and lrs[499] == pytest.approx(5e-5)
    assert lrs[500] == pytest.approx(6e-5) and lrs[999] == pytest.approx(6e-5)
    for epoch in (1, 2, 3):
        expected = 1e-5 + 0.5 * 5e-5 * (1 + math.cos(math.pi * epoch / 10))
        assert lrs[1000 * epoch] == pytest.approx(expected) and lrs[1000 * epoch + 999] == pytest.approx(expected)

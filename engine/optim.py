"""Optimizer parameter groups and learning-rate schedules (torch's own optimizers and LambdaLR/StepLR)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from engine.sections import OptimConfig, ParamGroupRule, ScheduleConfig


def _no_decay(name: str, param: torch.Tensor, cfg: OptimConfig) -> bool:
    if param.ndim == 0 and not cfg.decay_scalars:
        return True
    if not cfg.decay_all and (param.ndim == 1 or name.endswith(".bias")):
        return True
    return any(name.endswith(suffix) for suffix in cfg.no_decay_names)


def param_group_rules(cfg: OptimConfig) -> list[ParamGroupRule]:
    """`optim.groups` followed by one rule per `optim.group_lr` prefix (named after the prefix)."""
    rules = list(cfg.groups) + [ParamGroupRule(name=p, prefixes=[p], lr=lr) for p, lr in cfg.group_lr.items()]
    names = [r.name for r in rules]
    if "" in names or any(not r.prefixes for r in rules) or len(set(names)) != len(names):
        raise ValueError(f"optim.groups need distinct names and at least one prefix each: {names}")
    return rules


def build_param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig
) -> list[dict]:
    """Split trainable parameters into (lr group) x (decay, no decay) groups.

    A parameter belongs to the rule (`cfg.groups`, then `cfg.group_lr`) with its longest matching prefix;
    others form the default group at `cfg.lr`. Groups of `cfg.groups` come first, in their order; the
    others follow in the order of their first parameter. Frozen parameters (requires_grad False, e.g.
    momentum encoders) are skipped. Each group carries a `name` (for logs) and its own `lr`.
    """
    rules = param_group_rules(cfg)
    prefixes = sorted(((p, r) for r in rules for p in r.prefixes), key=lambda pr: len(pr[0]), reverse=True)
    groups: dict[tuple[str, bool], dict] = {}
    matched: set[str] = set()
    for name, param in named_params:
        if not param.requires_grad:
            continue
        prefix, rule = next(((p, r) for p, r in prefixes if name.startswith(p)), ("", None))
        if rule is not None:
            matched.add(prefix)
        lr = cfg.lr if rule is None else rule.lr if rule.lr is not None else cfg.lr * rule.lr_scale
        no_decay = _no_decay(name, param, cfg)
        key = ("" if rule is None else rule.name, no_decay)
        if key not in groups:
            groups[key] = {
                "name": f"{key[0] or 'default'}{'/no_decay' if no_decay else ''}",
                "params": [],
                "param_names": [],
                "lr": lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    unused = [p for r in rules for p in r.prefixes if p not in matched]
    if unused:
        raise ValueError(f"optim.groups / optim.group_lr prefixes match no trainable parameter: {unused}")
    order = {r.name: i for i, r in enumerate(cfg.groups)}
    return [groups[k] for k in sorted(groups, key=lambda k: order.get(k[0], len(order)))]


FUSED_DEVICES = ("cpu", "cuda")


def use_fused(groups: list[dict], cfg: OptimConfig) -> bool:
    """Whether Adam(W) takes torch's fused kernel: `optim.fused`, else (null) when every parameter is a
    floating-point tensor on the CPU or on CUDA (one kernel per step and dtype instead of ~6 passes per tensor)."""
    if cfg.fused is not None:
        return cfg.fused
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module | Iterable[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The configured torch optimizer over `model`'s parameter groups (or explicit groups); Adam(W) is fused on
    CPU and CUDA (`use_fused`; fused and foreach exclude each other, so foreach is left to torch otherwise)."""
    groups = build_param_groups(model.named_parameters(), cfg) if isinstance(model, nn.Module) else list(model)
    if cfg.name in ("adamw", "adam"):
        kernel = {"fused": True} if use_fused(groups, cfg) else {}
        adam = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        return adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **kernel)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def warmup_cosine_factor(t: int, total: int, warmup: int, start_ratio: float, end_ratio: float) -> float:
    """Multiplier of the peak lr at schedule position t: linear warm-up, then cosine to `end_ratio`."""
    if warmup > 0 and t < warmup:
        return start_ratio + (1.0 - start_ratio) * t / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (t - warmup) / span)
    return end_ratio + 0.5 * (1.0 - end_ratio) * (1.0 + math.cos(math.pi * progress))


def albef_cosine_factor(t: int, iters_per_epoch: int, epochs: int, warmup_stages: int, start_ratio: float,
                        end_ratio: float, stage_iters: int = 100) -> float:
    """The published schedule as the scripts run it (timm CosineLRScheduler stepped by hand).

    Epoch 0: warm-up in `warmup_stages` stages of `stage_iters` iterations each, from `start_ratio` up to
    1; then the peak. Epoch k >= 1: `end + (1 - end)/2 * (1 + cos(pi k / epochs))`, constant within the epoch.
    """
    epoch, i = divmod(t, iters_per_epoch)
    if epoch == 0:
        stage = i // stage_iters
        if stage < warmup_stages:
            return start_ratio + stage * (1.0 - start_ratio) / warmup_stages
        return 1.0
    return end_ratio + 0.5 * (1.0 - end_ratio) * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))


def schedule_length(cfg: ScheduleConfig, epochs: int, iters_per_epoch: int) -> tuple[int, int]:
    """(total, warm-up) length in scheduler ticks (steps or epochs, per `cfg.interval`)."""
    if cfg.interval == "step":
        total = epochs * iters_per_epoch
        warmup = cfg.warmup * iters_per_epoch if cfg.warmup_unit == "epochs" else cfg.warmup
    else:
        if cfg.warmup_unit == "steps" and cfg.warmup:
            raise ValueError("schedule.interval 'epoch' needs warmup_unit 'epochs'")
        total, warmup = epochs, cfg.warmup
    return total, warmup


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, base_lr: float, epochs: int, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """LR scheduler ticked by the trainer every step (`interval: step`) or every epoch.

    Warm-up and floor are given as absolute rates for the base lr; groups with their own lr scale by
    the same factor.
    """
    if cfg.name == "step":
        if cfg.interval != "epoch":
            raise ValueError("schedule 'step' decays per epoch: set schedule.interval to 'epoch'")
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    start, end = cfg.warmup_lr / base_lr, cfg.min_lr / base_lr
    if cfg.name == "albef_cosine":
        if cfg.interval != "step":
            raise ValueError("schedule 'albef_cosine' is ticked every step: set schedule.interval to 'step'")
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: albef_cosine_factor(t, iters_per_epoch, epochs, cfg.warmup, start, end))
    total, warmup = schedule_length(cfg, epochs, iters_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: warmup_cosine_factor(t, total, warmup, start, end)
    )

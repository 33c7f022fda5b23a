"""A toy task for engine tests: noisy regression with dropout, so data and model randomness both matter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from engine.seeding import item_rng


class NoisyRegression(Dataset):
    """Fixed inputs; each fetch adds item-seeded noise (like an augmentation)."""

    def __init__(self, n: int = 64, dim: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, 2, generator=g)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        noise = item_rng(self.seed, self.epoch, index).normal(0, 0.1, size=self.x.shape[1])
        return {"x": self.x[index] + torch.as_tensor(noise, dtype=torch.float32), "y": self.y[index],
                "index": torch.tensor(index)}


class ToyModel(nn.Module):
    """Returns two named losses; dropout consumes the global torch RNG every step."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
        self.temp = nn.Parameter(torch.tensor(0.07))

    def forward(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        pred = self.net(batch["x"])
        return {"mse": ((pred - batch["y"]) ** 2).mean(), "reg": self.temp**2 * 0.01}


def run_toy(output_dir, *, epochs: int = 3, stop_after_steps: int | None = None, resume: str | None = None,
            num_workers: int = 0, batch_size: int = 8, seed: int = 5, evaluate: bool = True,
            model: nn.Module | None = None, lr: float = 1e-2, train: dict | None = None,
            config: dict | None = None):
    """Train the toy task through the real engine pieces; returns (trainer, fit result). `model`, `lr`, `train`
    (TrainConfig overrides) and `config` (extra recorded config keys) vary the run for fault tests."""
    from engine.data import EpochSampler, TrainLoader
    from engine.distributed import init_distributed
    from engine.logger import setup_logging
    from engine.optim import build_optimizer, build_scheduler
    from engine.sections import OptimConfig, ScheduleConfig, TrainConfig
    from engine.seeding import seed_everything
    from engine.trainer import Trainer

    info = init_distributed("cpu")
    setup_logging(output_dir, info.rank)
    seed_everything(seed, info.rank)
    dataset = NoisyRegression(seed=seed)
    sampler = EpochSampler(len(dataset), shuffle=True, seed=seed, rank=info.rank, world_size=info.world_size)
    loader = TrainLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, seed=seed,
                         rank=info.rank)
    model = model if model is not None else ToyModel()
    optim_cfg = OptimConfig(lr=lr, weight_decay=0.01)
    sched_cfg = ScheduleConfig(warmup=3, warmup_lr=1e-3, min_lr=1e-4)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, sched_cfg, optim_cfg.lr, epochs, len(loader))
    cfg = TrainConfig(epochs=epochs, log_every=4, stop_after_steps=stop_after_steps, clip_grad_norm=1.0,
                      select_metric="neg_mse" if evaluate else None, progress_bar=False, **(train or {}))

    def evaluate_fn(m, epoch):
        pred = m.net(dataset.x)
        return {"neg_mse": -float(((pred - dataset.y) ** 2).mean())}

    trainer = Trainer(model, loader, optimizer, scheduler, cfg, info, output_dir,
                      loss_weights={"mse": 1.0, "reg": 0.5}, evaluate=evaluate_fn if evaluate else None,
                      config_dict={"seed": seed, "optim": {"lr": lr},
                                   "train": {"stop_after_steps": stop_after_steps, **(train or {})}, **(config or {})})
    if resume:
        trainer.resume(resume)
    return trainer, trainer.fit()

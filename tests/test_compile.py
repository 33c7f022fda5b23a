"""`train.compile`: the trainer runs the task model under torch.compile with the eager losses, a stable graph after
the first steps and checkpoints with the eager keys; fused AdamW selection; BERT activation checkpointing.

The fast tests compile through dynamo and AOTAutograd (`aot_eager`: the graph capture, graph breaks, guards and
the joint forward/backward graph that inductor receives). The inductor comparison itself costs minutes of C++
compilation on a 2-core machine (one g++ run of ~3-10 s per generated kernel, ~110 kernels even for the smallest
model): it runs with FASHIONFINE_INDUCTOR_TESTS=1 (benchmarks/README.md, "Compiled training step").
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
import torch

from benchmarks.pretrain_step import synthetic_batch
from engine.checkpoint import read_checkpoint
from engine.config import ConfigError, load_config
from engine.distributed import DistInfo
from engine.optim import build_optimizer
from engine.sections import OptimConfig, TrainConfig
from engine.trainer import StepContext, Trainer
from models.bert import BertModel, TextConfig
from models.fine_pretrain import FinePretrainModel
from models.fine_retrieval import FineRetrievalModel
from tasks.fine_schema import PretrainConfig, RetrievalConfig

ROOT = Path(__file__).resolve().parents[1]
# The smallest model of the tiny configs' layout: one ViT block, one text and one fusion layer.
SMALL = ["model.vision.depth=1", "model.vision.image_res=16", "model.text.layers=2", "model.text.fusion_layer=1",
         "data.max_words=12", "model.queue_size=8"]
VOCAB, BATCH = 200, 4
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
INDUCTOR = os.environ.get("FASHIONFINE_INDUCTOR_TESTS") == "1"


def small_model(kind: str) -> tuple[torch.nn.Module, object]:
    schema, config, cls = ((PretrainConfig, "pretrain_tiny.yaml", FinePretrainModel) if kind == "pretrain"
                           else (RetrievalConfig, "retrieval_tiny.yaml", FineRetrievalModel))
    cfg = load_config(schema, [str(ROOT / "configs" / config)], SMALL)
    torch.manual_seed(0)
    return cls(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=VOCAB, sep_token_id=12), cfg


def batches(cfg, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [synthetic_batch(BATCH, cfg.data.max_words, cfg.model.vision.image_res, VOCAB, torch.device("cpu"), g)
            for _ in range(n)]


def run_steps(model: torch.nn.Module, cfg, inputs: list[dict], out: Path, compile: bool) -> tuple[Trainer, list]:
    """Train steps through the real Trainer (epoch 0: the distillation warm-up reads the step position)."""
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    trainer = Trainer(model, None, optimizer, None, TrainConfig(compile=compile, progress_bar=False), CPU, out)
    torch.manual_seed(1)  # hard-negative sampling draws from the global generator
    logged = [trainer.train_step(b, StepContext(0, i, 10, i)) for i, b in enumerate(inputs)]
    trainer.tracker.close()
    return trainer, logged


def compare(kind: str, tmp_path: Path, steps: int = 3) -> Trainer:
    """Eager and compiled trainers from the same weights on the same batches: losses within 1e-5, and the steps
    after the second add no compilation."""
    from torch._dynamo.utils import counters

    model, cfg = small_model(kind)
    inputs = batches(cfg, steps)
    _, eager = run_steps(copy.deepcopy(model), cfg, inputs, tmp_path / "eager", compile=False)
    torch._dynamo.reset()
    counters.clear()
    frames = []
    original_step = Trainer.train_step

    def counted(self, batch, ctx):
        result = original_step(self, batch, ctx)
        frames.append(int(counters["stats"]["unique_graphs"]))
        return result

    Trainer.train_step = counted
    try:
        trainer, compiled = run_steps(model, cfg, inputs, tmp_path / "compiled", compile=True)
    finally:
        Trainer.train_step = original_step
    for a, b in zip(eager, compiled):
        assert a.keys() == b.keys()
        for name in a:
            assert abs(a[name] - b[name]) <= 1e-5, (name, a, b)
    assert frames[0] > 0, "nothing was compiled"
    assert frames[-1] == frames[1], f"graphs compiled after the second step: {frames}"
    assert sum(counters["recompiles"].values()) <= frames[1], dict(counters["recompiles"])
    return trainer


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile through dynamo + AOTAutograd without inductor's C++ code generation."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    yield
    torch._dynamo.reset()


def test_compiled_training_matches_eager_and_checkpoints_keep_eager_keys(tmp_path, aot_eager):
    trainer = compare("pretrain", tmp_path)
    assert hasattr(trainer.model, "_orig_mod")
    trainer.global_step = 3  # train_step alone does not count (fit does)
    path = trainer.save("checkpoint_last.pth")
    state = read_checkpoint(path)
    fresh, _ = small_model("pretrain")
    assert list(state["model"]) == list(fresh.state_dict())
    fresh.load_state_dict(state["model"], strict=True)
    resumed = Trainer(fresh, None, build_optimizer(fresh, OptimConfig(lr=1e-3)), None,
                      TrainConfig(compile=True, progress_bar=False), CPU, tmp_path / "resumed")
    resumed.resume(path)  # the compiled run's checkpoint resumes (config, optimizer state, position)
    assert resumed.global_step == 3 and resumed.optimizer.param_groups[0]["fused"]
    resumed.tracker.close()


@pytest.mark.skipif(not INDUCTOR, reason="inductor compile takes minutes on CPU: FASHIONFINE_INDUCTOR_TESTS=1")
@pytest.mark.parametrize("kind", ["pretrain", "retrieval"])
def test_inductor_losses_match_eager(kind, tmp_path):
    compare(kind, tmp_path)
    torch._dynamo.reset()


def test_compile_mode_needs_compile():
    with pytest.raises(ConfigError, match="train.compile_mode"):
        load_config(PretrainConfig, [str(ROOT / "configs/pretrain_tiny.yaml")], ["train.compile_mode=max-autotune"])
    cfg = load_config(PretrainConfig, [str(ROOT / "configs/pretrain_tiny.yaml")],
                      ["train.compile=true", "train.compile_mode=reduce-overhead"])
    assert cfg.train.compile and cfg.train.compile_mode == "reduce-overhead"


def test_fused_adamw_when_every_parameter_is_on_cpu_or_cuda():
    net = torch.nn.Linear(3, 2)
    assert build_optimizer(net, OptimConfig(name="adamw")).param_groups[0]["fused"]
    assert not build_optimizer(net, OptimConfig(name="adamw", fused=False)).param_groups[0]["fused"]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2, device="meta"))]}]
    # decided from where the parameters are: meta (neither CPU nor CUDA) keeps torch's default
    assert not build_optimizer(groups, OptimConfig(name="adam")).param_groups[0]["fused"]
    with pytest.raises(ValueError, match="optim.fused"):
        OptimConfig(name="sgd", fused=True).validate()
    if torch.cuda.is_available():
        cuda = torch.nn.Linear(3, 2).cuda()
        group = build_optimizer(cuda, OptimConfig(name="adamw")).param_groups[0]
        assert group["fused"] and not group["foreach"]


def test_fused_adamw_on_cpu_matches_the_per_tensor_loop():
    """The CPU default changed to the fused kernel: same updates as torch's per-tensor AdamW within float32
    rounding, over several steps, weight decay and a no-decay group included."""
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))]
    nets.append(copy.deepcopy(nets[0]))
    initial = copy.deepcopy(nets[0])
    cfg = dict(name="adamw", lr=1e-2, weight_decay=0.05)
    opts = [build_optimizer(nets[0], OptimConfig(**cfg)), build_optimizer(nets[1], OptimConfig(**cfg, fused=False))]
    assert opts[0].param_groups[0]["fused"] and not opts[1].param_groups[0]["fused"]
    for _ in range(5):
        x = torch.randn(8, 16)
        for net, opt in zip(nets, opts):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b, start in zip(nets[0].parameters(), nets[1].parameters(), initial.parameters()):
        assert (a - start).abs().max() > 1e-3  # the steps moved every tensor
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_keeps_this_runs_adam_kernel(tmp_path):
    from engine.trainer import load_optimizer_state

    net = torch.nn.Linear(3, 2)
    saved = build_optimizer(net, OptimConfig(name="adamw", fused=True))
    net(torch.ones(1, 3)).sum().backward()
    saved.step()
    own = build_optimizer(net, OptimConfig(name="adamw", fused=False))
    load_optimizer_state(own, saved.state_dict())
    assert not own.param_groups[0]["fused"] and own.state[net.weight]["exp_avg"].shape == (2, 3)


def test_bert_checkpointing_same_loss_and_gradients():
    cfg = TextConfig(hidden=32, layers=3, heads=2, intermediate=64, fusion_layer=1, dropout=0.1)
    torch.manual_seed(0)
    plain = BertModel(100, cfg, image_width=16).train()
    ckpt = copy.deepcopy(plain)
    ckpt.cfg = TextConfig(**{**cfg.__dict__, "grad_ckpt_layers": 3})
    ids, mask, image = torch.randint(1, 100, (2, 7)), torch.ones(2, 7, dtype=torch.long), torch.randn(2, 5, 16)
    results, saved = [], []
    for net in (plain, ckpt):
        torch.manual_seed(3)  # dropout: checkpointing replays the same masks in the recomputation
        count = [0]

        def pack(t, count=count):
            count[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net.fusion(net.text(ids, mask), mask, image)
        saved.append(count[0])
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    assert saved[1] < saved[0] / 2, f"activations saved without / with checkpointing: {saved}"
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="grad_ckpt_layers"):
        TextConfig(layers=2, fusion_layer=1, grad_ckpt_layers=-1).validate()

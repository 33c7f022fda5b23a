"""Where one Fashion-FINE pretraining step spends its time, module by module: forward and backward tables.

The workload of the per-module comparison with the published model (benchmarks/README.md, "Pretraining step per
module"): base sizes (ViT-B/16 at 256 px, BERT-base with fusion from layer 6), batch 2, queue 256, text length 40
(the second text has 7 padding positions, 3 masked-LM labels in all), fp32, train mode, `compat` mode, 2 threads.
One step = forward with the five losses and their sum, backward, AdamW step, `zero_grad`.

Procedure, in one process: build, `--warmup` steps, `--steps` uninstrumented steps (phase times, page faults,
process CPU time), `--label-steps` steps with the label stack, `--profile-steps` steps under torch.profiler.

* Label stack (forward): forward pre/post hooks on the modules, and labelled wrappers put in place of the model's
  functions that are no module call (losses, pooling, momentum update, queues, ...) for the instrumented steps.
  Time is exclusive (`time.perf_counter`): what an inner label takes is not counted again in the outer one.
* Backward: the same labels as `record_function` scopes under torch.profiler; every autograd node evaluated in
  the backward is charged to the label of the forward op that created it (matched by the autograd sequence
  number); AccumulateGrad nodes to "gradient accumulation", the rest of the backward's wall time to "autograd
  engine outside node evaluation". The top aten ops (self CPU time) come from these steps too.

  OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 python benchmarks/step_profile.py --markdown profile.md
  python benchmarks/step_profile.py --tiny --steps 1 --label-steps 1 --profile-steps 1    # a quick check

Per-module figures are medians over the label-stack (forward) or profiled (backward) steps; the step phases are
medians over the uninstrumented steps. With the base config the published figures measured at this workload on
a 2-core machine are printed beside ours (ratio = ours / published); `--tiny` (the tiny test config) prints ours
only.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# isort: off
import engine  # noqa: E402,F401  (before torch loads OpenMP: OMP_WAIT_POLICY=PASSIVE, as the entry points)
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd.profiler import record_function  # noqa: E402
# isort: on

from engine.config import load_config  # noqa: E402
from engine.trainer import StepContext  # noqa: E402
from models.fine_pretrain import FinePretrainModel  # noqa: E402
from tasks.fine_common import optimizer_and_schedule  # noqa: E402
from tasks.fine_schema import PretrainConfig  # noqa: E402

VIT, VIT_M = "ViT online", "ViT momentum"
TXT, TXT_M = "BERT text-only online", "BERT text-only momentum"
FUS_POS, FUS_NEG = "Fusion positive pairs", "Fusion ITM negatives"
MLM_HEAD, MLM_LOSS, RTD_HEAD, RTD_LOSS = "MLM head", "MLM loss", "Replaced-token head", "Replaced-token loss"
ITM_HEAD, ITM_SAMPLING = "ITM head + loss", "ITM hard-negative sampling + gathers"
POOL, NGRAM, PROJ = "Local attention pooling", "Local n-gram convolutions (phrase)", "Projections + normalize + mix"
ITC, SYMBOL, EMA, QUEUE, OTHER = "ITC loss", "Symbol loss", "Momentum (EMA) update", "Queue update", "Other forward code"
ACCUMULATE, UNLABELLED, ENGINE = "gradient accumulation into .grad", "nodes created outside any label", \
    "autograd engine outside node evaluation"
VIT_SUBS = ("patch embedding", "attention blocks", "MLP", "LayerNorms", "residual adds, pos-embed, cls")
BERT_SUBS = ("embeddings", "self-attention", "feed-forward")
FUSION_SUBS = ("self-attention", "cross-attention", "feed-forward")
CLS_ID, SEP_ID, FIRST_WORD_ID, BERT_VOCAB = 101, 102, 999, 30522

# Published model, this workload, 2-core machine (ms per step; medians): forward by label-stack steps, backward by
# profiled steps, phases by uninstrumented steps. Group totals are medians of per-step sums.
PUBLISHED_FORWARD = {
    "total": 2507.5, VIT: 699.7, f"{VIT}/patch embedding": 7.4, f"{VIT}/attention blocks": 269.7, f"{VIT}/MLP": 399.4,
    f"{VIT}/LayerNorms": 8.1, f"{VIT}/residual adds, pos-embed, cls": 10.1, VIT_M: 692.7,
    f"{VIT_M}/attention blocks": 270.7, f"{VIT_M}/MLP": 397.9, TXT: 101.1, f"{TXT}/embeddings": 1.0,
    f"{TXT}/self-attention": 35.8, f"{TXT}/feed-forward": 57.8, TXT_M: 98.4, FUS_POS: 200.3,
    f"{FUS_POS}/self-attention": 35.9, f"{FUS_POS}/cross-attention": 96.4, f"{FUS_POS}/feed-forward": 57.0,
    FUS_NEG: 317.7, f"{FUS_NEG}/self-attention": 56.2, f"{FUS_NEG}/cross-attention": 171.8,
    f"{FUS_NEG}/feed-forward": 90.9, MLM_HEAD: 52.2, MLM_LOSS: 2.1, RTD_HEAD: 1.6, RTD_LOSS: 0.1, ITM_HEAD: 0.4,
    ITM_SAMPLING: 1.2, POOL: 7.0, NGRAM: 8.8, PROJ: 3.6, ITC: 1.1, SYMBOL: 0.2, EMA: 321.4, QUEUE: 0.9, OTHER: 2.0,
}
PUBLISHED_BACKWARD = {
    "total": 2734.9, VIT: 1446.0, f"{VIT}/patch embedding": 11.3, f"{VIT}/attention blocks": 505.5,
    f"{VIT}/MLP": 941.0, f"{VIT}/LayerNorms": 12.3, TXT: 238.1, f"{TXT}/embeddings": 59.5,
    f"{TXT}/self-attention": 47.3, f"{TXT}/feed-forward": 126.9, FUS_POS: 340.3, f"{FUS_POS}/self-attention": 50.2,
    f"{FUS_POS}/cross-attention": 142.9, f"{FUS_POS}/feed-forward": 115.3, FUS_NEG: 485.2,
    f"{FUS_NEG}/self-attention": 77.8, f"{FUS_NEG}/cross-attention": 251.3, f"{FUS_NEG}/feed-forward": 145.8,
    MLM_HEAD: 90.5, MLM_LOSS: 2.6, "RTD head + loss": 2.8, "ITM head + loss + gathers": 1.1, POOL: 11.0, NGRAM: 26.0,
    PROJ: 4.4, "ITC + symbol losses": 0.9, ACCUMULATE: 4.5, UNLABELLED: 0.0, ENGINE: 27.6,
}
PUBLISHED_PHASES = {"step": 5755, "forward": 2449, "backward": 2505, "optimizer": 793, "zero_grad": 30}
# backward rows that merge forward labels
BACKWARD_MERGE = {RTD_HEAD: "RTD head + loss", RTD_LOSS: "RTD head + loss", ITM_HEAD: "ITM head + loss + gathers",
                  ITM_SAMPLING: "ITM head + loss + gathers", ITC: "ITC + symbol losses",
                  SYMBOL: "ITC + symbol losses"}


# ---------------------------------------------------------------------------------------------- labels
class LabelStack:
    """Exclusive wall time per label; optionally each label also a `record_function` scope for the profiler."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.scopes: list[record_function] = []
        self.times: dict[str, float] = defaultdict(float)
        self.last = 0.0
        self.active = False
        self.scoped = False

    def push(self, label: str) -> None:
        now = time.perf_counter()
        if self.stack:
            self.times[self.stack[-1]] += now - self.last
        self.stack.append(label)
        if self.scoped:
            scope = record_function(label)
            scope.__enter__()
            self.scopes.append(scope)
        self.last = time.perf_counter()

    def pop(self) -> None:
        if self.scoped:
            self.scopes.pop().__exit__(None, None, None)
        now = time.perf_counter()
        self.times[self.stack.pop()] += now - self.last
        self.last = now

    @contextmanager
    def recording(self, scoped: bool) -> Iterator[dict[str, float]]:
        """Label this block (its unlabelled time goes to OTHER); yields the step's times (seconds)."""
        self.times, self.scoped, self.active = defaultdict(float), scoped, True
        self.push(OTHER)
        try:
            yield self.times
        finally:
            while self.stack:
                self.pop()
            self.active = False


def module_labels(model: FinePretrainModel, batch: int) -> dict[nn.Module, Callable[[tuple], str]]:
    """Module -> label of a call (fusion layers by the batch of their input: B positives, 2B ITM negatives)."""
    labels: dict[nn.Module, Callable[[tuple], str]] = {}

    def fixed(label: str) -> Callable[[tuple], str]:
        return lambda args: label

    for encoder, group in ((model.visual_encoder, VIT), (model.visual_encoder_m, VIT_M)):
        labels[encoder] = fixed(f"{group}/residual adds, pos-embed, cls")
        labels[encoder.patch_embed] = fixed(f"{group}/patch embedding")
        labels[encoder.norm] = fixed(f"{group}/LayerNorms")
        for block in encoder.blocks:
            labels[block] = fixed(f"{group}/residual adds, pos-embed, cls")
            labels[block.attn] = fixed(f"{group}/attention blocks")
            labels[block.mlp] = fixed(f"{group}/MLP")
            labels[block.norm1] = labels[block.norm2] = fixed(f"{group}/LayerNorms")
    fusion_from = model.cfg.text.fusion_layer
    for bert, group in ((model.text_encoder, TXT), (model.text_encoder_m, TXT_M)):
        labels[bert.embeddings] = fixed(f"{group}/embeddings")
        for i, layer in enumerate(bert.encoder.layer):
            if i < fusion_from:
                def text_part(sub: str, group: str = group) -> Callable[[tuple], str]:
                    return fixed(f"{group}/{sub}")
            elif bert is model.text_encoder:
                def text_part(sub: str) -> Callable[[tuple], str]:
                    return lambda args: f"{FUS_POS if args[0].shape[0] == batch else FUS_NEG}/{sub}"
            else:
                continue
            labels[layer] = text_part("feed-forward")
            labels[layer.attention] = text_part("self-attention")
            labels[layer.intermediate] = labels[layer.output] = text_part("feed-forward")
            if layer.has_cross:
                labels[layer.crossattention] = text_part("cross-attention")
    labels[model.decoder_layer] = fixed(MLM_HEAD)
    labels[model.replace_predict_layer] = fixed(RTD_HEAD)
    labels[model.itm_head] = fixed(ITM_HEAD)
    return labels


def function_labels(model: FinePretrainModel) -> list[tuple[Any, str, Callable[[tuple], str]]]:
    """(owner, attribute, label of a call) for the model's code that is not a module call."""
    import models.bert as bert
    import models.fine_dual_encoder as dual
    import models.fine_local as local
    import models.losses as losses

    def head_loss(args: tuple) -> str:
        return MLM_LOSS if args and args[0] is model.decoder_layer else RTD_LOSS

    table: list[tuple[Any, str, str | Callable[[tuple], str]]] = [
        (dual.FineDualEncoder, "update_momentum", EMA), (dual.FineDualEncoder, "enqueue_features", QUEUE),
        (dual.FineDualEncoder, "contrastive_loss", ITC), (losses, "positive_targets", ITC),
        (dual.FineDualEncoder, "project_image", PROJ), (dual.FineDualEncoder, "project_text", PROJ),
        (dual.FineDualEncoder, "image_feature", PROJ), (dual.FineDualEncoder, "text_feature", PROJ),
        (dual.FineDualEncoder, "symbol_feature", PROJ), (dual.FineDualEncoder, "momentum_features", PROJ),
        (local, "attention_pool", POOL), (local, "phrase_feature", NGRAM), (losses, "symbol_loss", SYMBOL),
        (dual.FineDualEncoder, "image_text_matching", ITM_SAMPLING), (losses, "matching_loss", ITM_HEAD),
        (losses, "token_prediction_loss", head_loss), (bert.BertModel, "_run", OTHER),
    ]
    return [(owner, name, label if callable(label) else (lambda args, label=label: label))
            for owner, name, label in table if hasattr(owner, name)]


def install_labels(model: FinePretrainModel, batch: int, stack: LabelStack) -> Callable[[], None]:
    """Module hooks, and labelled wrappers in place of the functions (in their module, in every `models.*` module
    that imported them, or on their class); returns the function that removes both."""
    handles = []
    for module, label_of in module_labels(model, batch).items():
        def pre(mod: nn.Module, args: tuple, label_of: Callable[[tuple], str] = label_of) -> None:
            if stack.active:
                stack.push(label_of(args))

        def post(mod: nn.Module, args: tuple, output: Any) -> None:
            if stack.active:
                stack.pop()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    patched: list[tuple[Any, str, Any]] = []
    namespaces = [m for name, m in list(sys.modules.items()) if name.startswith("models.") and m is not None]
    for owner, name, label_of in function_labels(model):
        original = getattr(owner, name)

        def wrapper(*args: Any, _fn: Any = original, _label: Callable[[tuple], str] = label_of, **kwargs: Any) -> Any:
            if not stack.active:
                return _fn(*args, **kwargs)
            stack.push(_label(args))
            try:
                return _fn(*args, **kwargs)
            finally:
                stack.pop()

        targets = [(owner, name)] if isinstance(owner, type) else \
            [(ns, attr) for ns in namespaces for attr, value in list(vars(ns).items()) if value is original]
        for target, attr in targets:
            patched.append((target, attr, original))
            setattr(target, attr, wrapper)

    def remove() -> None:
        for handle in handles:
            handle.remove()
        for target, attr, original in reversed(patched):
            setattr(target, attr, original)

    return remove


# ---------------------------------------------------------------------------------------------- workload
def fixture_batch(batch: int, length: int, image_res: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Texts of `length` tokens (the second 7 shorter), a sign at position 1, 3 masked-LM labels in all."""
    g = torch.Generator().manual_seed(seed)
    first_word = FIRST_WORD_ID if vocab > FIRST_WORD_ID + 100 else 14
    cls_id, sep_id = (CLS_ID, SEP_ID) if vocab > SEP_ID else (11, 12)
    lengths = torch.full((batch,), length)
    lengths[1::2] = max(4, length - 7)
    positions = torch.arange(length)[None]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(first_word, vocab, (batch, length), generator=g) * mask
    ids[:, 0] = cls_id
    ids[:, 1] = torch.randint(1, 10, (batch,), generator=g)
    ids[torch.arange(batch), lengths - 1] = sep_id
    mlm = torch.full_like(ids, -100)
    for row, col in ((0, 3), (0, 11), (1, 5)):  # word positions (>= 2, before [SEP] of texts >= 13 tokens)
        mlm[row, col] = ids[row, col]
    rtd = torch.where(mask.bool(), (torch.rand(batch, length, generator=g) < 0.1).long(), torch.full_like(ids, -100))
    return {"image": torch.randn(batch, 3, image_res, image_res, generator=g), "input_ids": ids,
            "attention_mask": mask, "mlm_labels": mlm, "rtd_labels": rtd, "product_idx": torch.arange(batch)}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load_average() -> float:
    return os.getloadavg()[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, time, label and profile; returns every figure (ms per step)."""
    torch.set_num_threads(args.threads)
    config = "configs/pretrain_tiny.yaml" if args.tiny else "configs/pretrain.yaml"
    overrides = [f"model.queue_size={args.queue}", f"data.max_words={args.max_words}", "compat.mode=compat",
                 *args.overrides]
    cfg = load_config(PretrainConfig, [ROOT / config], overrides)
    vocab = 1000 if args.tiny else args.vocab_size
    load_start = load_average()
    torch.manual_seed(args.seed)
    model = FinePretrainModel(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=vocab,
                              sep_token_id=SEP_ID if vocab > SEP_ID else 12).train()
    optimizer, _ = optimizer_and_schedule(model, cfg.optim, cfg.schedule, cfg.compat, epochs=1, iters_per_epoch=1000)
    for group in optimizer.param_groups:
        group["lr"] = 1e-5
    batch = fixture_batch(args.batch_size, args.max_words, cfg.model.vision.image_res, vocab, args.seed)
    ctx = StepContext(epoch=1, iter_in_epoch=0, iters_per_epoch=100, global_step=0)
    weights = cfg.loss.weights
    stack = LabelStack()

    def forward() -> torch.Tensor:
        losses = model(batch, ctx)
        return sum(weights.get(name, 1.0) * value.float() for name, value in losses.items())

    def step(labelled: bool = False, scoped: bool = False) -> dict[str, Any]:
        phases: dict[str, Any] = {}
        cpu0, faults, t0 = time.process_time(), minor_faults(), time.perf_counter()
        if labelled:
            with stack.recording(scoped) as labels:
                total = forward()
            phases["labels"] = dict(labels)
        else:
            total = forward()
        t1, f1 = time.perf_counter(), minor_faults()
        total.backward()
        t2, f2 = time.perf_counter(), minor_faults()
        optimizer.step()
        t3, f3 = time.perf_counter(), minor_faults()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        phases.update(forward=t1 - t0, backward=t2 - t1, optimizer=t3 - t2, zero_grad=t4 - t3, step=t4 - t0,
                      cpu=time.process_time() - cpu0, faults_forward=f1 - faults, faults_backward=f2 - f1,
                      faults_optimizer=f3 - f2)
        if not torch.isfinite(total.detach()):
            raise SystemExit(f"error: non-finite loss {float(total)}")
        return phases

    for _ in range(args.warmup):
        step()
    plain = [step() for _ in range(args.steps)]
    remove_labels = install_labels(model, args.batch_size, stack)
    try:
        labelled = [step(labelled=True) for _ in range(args.label_steps)]
        profiled, backward_nodes, op_self, op_calls = [], [], defaultdict(float), defaultdict(int)
        for _ in range(args.profile_steps):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                phases = step(labelled=True, scoped=True)
            profiled.append(phases)
            backward_nodes.append(backward_by_label(prof.events(), set(phases["labels"]), phases["backward"]))
            for item in prof.key_averages():
                if item.key.startswith("aten::"):
                    op_self[item.key] += item.self_cpu_time_total / 1e3 / args.profile_steps
                    op_calls[item.key] += item.count
    finally:
        remove_labels()
    load_end = load_average()

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows) * 1e3 if rows else float("nan")

    forward_ms = per_label_medians([r["labels"] for r in labelled]) if labelled else {}
    backward_ms = per_label_medians(backward_nodes) if backward_nodes else {}
    top = sorted(op_self.items(), key=lambda kv: -kv[1])[: args.top]
    return {
        "config": config, "overrides": overrides, "vocab_size": vocab, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "batch_size": args.batch_size, "load_start": load_start, "load_end": load_end,
        "steps": {"uninstrumented": len(plain), "labelled": len(labelled), "profiled": len(profiled)},
        "phases_ms": {k: med(plain, k) for k in ("step", "forward", "backward", "optimizer", "zero_grad", "cpu")},
        "step_ms_all": [r["step"] * 1e3 for r in plain],
        "faults": {k: statistics.median(r[k] for r in plain) if plain else None
                   for k in ("faults_forward", "faults_backward", "faults_optimizer")},
        "labelled_forward_ms": med(labelled, "forward"), "profiled_backward_ms": med(profiled, "backward"),
        "forward_ms": forward_ms, "backward_ms": backward_ms,
        "top_ops": [{"op": op, "self_ms": ms, "calls_per_step": op_calls[op] / args.profile_steps} for op, ms in top],
        "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def backward_by_label(events: Any, labels: set[str], backward_s: float) -> dict[str, float]:
    """Seconds of the backward's autograd nodes per forward label, from one profiled step's events."""
    creator: dict[int, str] = {}
    for ev in events:
        if ev.sequence_nr < 0 or ev.name.startswith("autograd::engine"):
            continue
        parent = ev.cpu_parent
        while parent is not None and parent.name not in labels:
            parent = parent.cpu_parent
        if parent is not None:
            creator.setdefault(ev.sequence_nr, parent.name)
    out: dict[str, float] = defaultdict(float)
    for ev in events:
        if not ev.name.startswith("autograd::engine::evaluate_function: "):
            continue
        seconds = ev.cpu_time_total / 1e6
        if "AccumulateGrad" in ev.name:
            out[ACCUMULATE] += seconds
        else:
            out[creator.get(ev.sequence_nr, UNLABELLED)] += seconds
    out[ENGINE] = max(0.0, backward_s - sum(out.values()))
    return dict(out)


def per_label_medians(steps: list[dict[str, float]]) -> dict[str, float]:
    """ms per label, median over steps; group totals (`ViT online`, ...) and `total` are medians of per-step sums."""
    keys = {k for s in steps for k in s}
    groups = {k.split("/")[0] for k in keys if "/" in k}
    out = {k: statistics.median(s.get(k, 0.0) for s in steps) * 1e3 for k in keys}
    for g in groups:
        out[g] = statistics.median(sum(v for k, v in s.items() if k.split("/")[0] == g) for s in steps) * 1e3
    out["total"] = statistics.median(sum(s.values()) for s in steps) * 1e3
    return out


# ---------------------------------------------------------------------------------------------- tables
def forward_rows() -> list[tuple[str, str]]:
    """(row title, label key) in table order."""
    rows = [("**forward total (label-stack steps)**", "total")]
    for group, subs in ((VIT, VIT_SUBS), (VIT_M, VIT_SUBS), (TXT, BERT_SUBS), (TXT_M, BERT_SUBS),
                        (FUS_POS, FUSION_SUBS), (FUS_NEG, FUSION_SUBS)):
        rows.append((f"{group}, total", group))
        rows += [(f"— {sub}", f"{group}/{sub}") for sub in subs]
    rows += [(x, x) for x in (MLM_HEAD, MLM_LOSS, RTD_HEAD, RTD_LOSS, ITM_HEAD, ITM_SAMPLING, POOL, NGRAM, PROJ, ITC,
                              SYMBOL, EMA, QUEUE, OTHER)]
    return rows


def backward_rows() -> list[tuple[str, str]]:
    rows = [("**backward total (profiled steps)**", "total")]
    for group, subs in ((VIT, VIT_SUBS), (TXT, BERT_SUBS), (FUS_POS, FUSION_SUBS), (FUS_NEG, FUSION_SUBS)):
        rows.append((f"{group}, total", group))
        rows += [(f"— {sub}", f"{group}/{sub}") for sub in subs]
    rows += [(x, x) for x in (MLM_HEAD, MLM_LOSS, "RTD head + loss", "ITM head + loss + gathers", POOL, NGRAM, PROJ,
                              "ITC + symbol losses", OTHER, ACCUMULATE, UNLABELLED, ENGINE)]
    return rows


def merged_backward(ms: dict[str, float]) -> dict[str, float]:
    out = dict(ms)
    for label, row in BACKWARD_MERGE.items():
        out[row] = out.get(row, 0.0) + out.pop(label, 0.0)
    return out


def table(rows: list[tuple[str, str]], ours: dict[str, float], published: dict[str, float] | None) -> list[str]:
    def cell(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    if published is None:
        lines = ["| module | ours ms |", "|---|---:|"]
        return lines + [f"| {title} | {cell(ours.get(key, 0.0))} |" for title, key in rows]
    lines = ["| module | published ms | ours ms | ratio |", "|---|---:|---:|---:|"]
    for title, key in rows:
        ref, mine = published.get(key), ours.get(key, 0.0)
        ratio = f"{mine / ref:.2f}" if ref and ref >= 1.0 else "–"
        lines.append(f"| {title} | {cell(ref)} | {cell(mine)} | {ratio} |")
    return lines


def markdown(r: dict[str, Any], compare: bool) -> str:
    ph = r["phases_ms"]
    out = [f"Pretraining step per module: {r['config']} {' '.join(r['overrides'])}, batch {r['batch_size']}, fp32, "
           f"{r['threads']} threads, torch {r['torch']}; 1-min load {r['load_start']:.2f} at the start, "
           f"{r['load_end']:.2f} at the end; steps: {r['steps']['uninstrumented']} uninstrumented, "
           f"{r['steps']['labelled']} labelled, {r['steps']['profiled']} profiled; peak RSS {r['peak_rss_GiB']:.1f} GiB.",
           "", "Step phases (uninstrumented steps, medians):", ""]
    if compare:
        out += ["| phase | published ms | ours ms | ratio |", "|---|---:|---:|---:|"]
        for key in ("step", "forward", "backward", "optimizer", "zero_grad"):
            out.append(f"| {key} | {PUBLISHED_PHASES[key]} | {ph[key]:.0f} | {ph[key] / PUBLISHED_PHASES[key]:.2f} |")
    else:
        out += ["| phase | ours ms |", "|---|---:|"] + [f"| {k} | {ph[k]:.0f} |" for k in
                                                          ("step", "forward", "backward", "optimizer", "zero_grad")]
    out.append(f"| process CPU time | {'– | ' if compare else ''}{ph['cpu']:.0f} |{' – |' if compare else ''}")
    out += ["", "Forward, ms per step (exclusive times; label-stack steps, medians):", ""]
    out += table(forward_rows(), r["forward_ms"], PUBLISHED_FORWARD if compare else None)
    out += ["", "Backward, ms per step (autograd nodes by the label of the forward op that created them; profiled "
                "steps, medians):", ""]
    out += table(backward_rows(), merged_backward(r["backward_ms"]), PUBLISHED_BACKWARD if compare else None)
    out += ["", f"Top {len(r['top_ops'])} aten ops by self CPU time (profiled steps; forward + backward + optimizer):",
            "", "| # | op | self ms | calls/step |", "|---:|---|---:|---:|"]
    out += [f"| {i} | `{o['op']}` | {o['self_ms']:.1f} | {o['calls_per_step']:.0f} |"
            for i, o in enumerate(r["top_ops"], 1)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny test config instead of the base sizes")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="further config overrides")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--queue", type=int, default=256, help="model.queue_size")
    parser.add_argument("--max-words", type=int, default=40, help="text length")
    parser.add_argument("--vocab-size", type=int, default=BERT_VOCAB)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="uninstrumented steps (phases, step time)")
    parser.add_argument("--label-steps", type=int, default=2, help="steps with the label stack (forward table)")
    parser.add_argument("--profile-steps", type=int, default=2, help="steps under torch.profiler (backward table)")
    parser.add_argument("--top", type=int, default=15, help="aten ops listed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if min(args.steps, args.label_steps, args.profile_steps) < 1 or args.warmup < 0:
        parser.error("--steps, --label-steps and --profile-steps must be >= 1, --warmup >= 0")
    if args.queue % args.batch_size or args.batch_size < 2:
        parser.error(f"--batch-size must be >= 2 and divide --queue {args.queue}")
    if args.max_words < 20:
        parser.error("--max-words must be >= 20 (the fixture's masked-LM positions)")
    result = run(args)
    compare = not args.tiny and args.batch_size == 2 and args.queue == 256 and args.max_words == 40 \
        and not args.overrides
    text = markdown(result, compare)
    print(text)
    from engine.atomic import write_json, write_text

    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

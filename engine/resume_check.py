"""What may change on `--resume`: the config keys that take effect when a run continues (where it writes and
logs, how often it checkpoints, when it stops, loader and thread counts, where its data and initial weights
lie); every other changed key is refused, since the checkpoint's optimizer, schedule and data order would
silently override it or mix two runs. A different world size is refused too (the data order and the global
batch depend on it)."""

from __future__ import annotations

from typing import Any

from engine.errors import RunError

# Dotted keys of the FINE/BLIP configs (lower case) and of ASEN++ (upper case); a key ending in '.' covers
# its whole section.
TAKES_EFFECT_ON_RESUME = frozenset({
    # output, logging, progress, trackers
    "output_dir", "eval_output_dir", "train.log_every", "train.progress_bar", "train.report_to",
    "SAVE_DIR", "NAME", "LOGGER.", "SOLVER.LOG_PERIOD",
    # checkpointing and stopping
    "train.stop_after_steps", "train.checkpoint_every", "train.skip_nonfinite_steps",
    "CKPT.STOP_AFTER_STEPS", "CKPT.EVERY_ITERS", "SOLVER.SKIP_NONFINITE_STEPS", "RESUME",
    # processes, threads, time-outs
    "runtime.num_workers", "runtime.cpu_threads", "runtime.pin_memory", "runtime.dist_timeout_s",
    "runtime.stall_timeout_s", "DATA.NUM_WORKERS", "CPU_THREADS", "DIST.TIMEOUT_S", "DIST.STALL_TIMEOUT_S",
    # how the same step is computed (torch.compile, the Adam kernel: the trainer keeps this run's choice)
    "train.compile", "train.compile_mode", "optim.fused",
    # evaluation batching (same results, other memory use)
    "data.eval_batch_size", "eval.chunk_size", "DATA.TEST_BATCHSIZE", "EVAL.CHUNK_QUERIES", "DATA.CHECK_IMAGES",
    # where the data and the initial weights lie (the weights are replaced by the checkpoint's)
    "data.root", "data.tokenizer", "data.wordnet_path", "data.annotation_dir", "data.image_dir",
    "DATA.BASE_PATH", "DATA.DATASET", "checkpoint", "model.vision.init_from", "model.text.init_from",
    "INIT_FROM", "MODEL.GLOBAL.BACKBONE.WEIGHTS", "MODEL.LOCAL.BACKBONE.WEIGHTS",
})
SHOWN = 5


def takes_effect(key: str) -> bool:
    """Whether a changed `key` may differ from the checkpoint's config on resume."""
    return key in TAKES_EFFECT_ON_RESUME or any(
        rule.endswith(".") and key.startswith(rule) for rule in TAKES_EFFECT_ON_RESUME)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """`(dotted key, old value, new value)` of every leaf that differs; keys present on one side only (added
    or removed by an upgrade of the schema) are not changes."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) & set(new), key=str):
            out.extend(changed_keys(old[key], new[key], f"{prefix}{key}."))
        return out
    if _normal(old) == _normal(new):
        return []
    return [(prefix.rstrip("."), old, new)]


def _normal(value: Any) -> Any:
    return [_normal(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_resume_config(old: dict, new: dict, path: object) -> list[str]:
    """Refuse (RunError) a resume whose config changes a key that would not take effect; return the changed
    keys that do (for the log)."""
    changes = changed_keys(old or {}, new or {})
    refused = [c for c in changes if not takes_effect(c[0])]
    if refused:
        listed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in refused[:SHOWN])
        more = f" (and {len(refused) - SHOWN} more)" if len(refused) > SHOWN else ""
        raise RunError(f"cannot resume {path} with a changed config: {listed}{more}; these keys would not take "
                       "effect on a resumed run (its optimizer, schedule and data order come from the checkpoint): "
                       f"resume with the config it was written with, or start a new run from its weights "
                       f"({new_run(path)})")
    return [k for k, _, _ in changes]


def check_world_size(saved: int | None, current: int, path: object) -> None:
    """Refuse a resume on another number of processes than the checkpoint's run."""
    if saved is not None and int(saved) != current:
        raise RunError(f"cannot resume {path} on {current} process(es): it was written by a run of {saved}, and the "
                       "data order and the global batch depend on the number of processes; resume with "
                       f"{saved} process(es), or start a new run from its weights ({new_run(path)})")


def new_run(path: object) -> str:
    """How a new run starts from a checkpoint's weights, in every entry point's terms."""
    return f"--checkpoint {path}; ASEN++: --set INIT_FROM={path}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

"""Checkpoint files: the one reader of every weight file (`read_checkpoint`; a sealed file is verified against its
content hash), the one checkpoint writer (`save_checkpoint`: finite weights, sealed, atomic, one line on a full
disk) and the training state they hold (for exact `--resume`, `load_resumable`).

Every unusable file ends as one `CheckpointError` line naming it (`FileNotFoundError` when missing).
"""

from __future__ import annotations

import errno
import hashlib
import pickle
import re
import shutil
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.atomic import torch_save
from engine.errors import DataError, RunError

CHECKPOINT_FORMAT = "fashionfine-1"  # a training state (`training_state`); read unverified when not sealed
SEALED_FORMAT = "fashionfine-2"  # a training state `seal` marked: it must carry HASH_KEY, which every read checks
HASH_KEY = "sha256"
# Published ASEN++ files store the epoch MAP as a NumPy scalar: these types are allowed besides tensors.
NUMPY_SCALARS = [np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType]
# What torch raises (instead of the OSError) when the disk fills up under its zip writer.
TORCH_WRITE_FAILURES = re.compile(r"unexpected pos|PytorchStreamWriter failed writing|file write failed")


class CheckpointError(RunError, DataError):
    """A checkpoint or weight file that cannot be used (unreadable, corrupt, another model's, not resumable);
    the message names the file. Both a `RunError` and a `DataError`."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------- content hash


def _tensor_bytes(t: torch.Tensor) -> memoryview | bytes:
    if t.device.type == "meta":
        return b""
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.detach().resolve_conj().resolve_neg().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _walk(obj: Any, h: Any) -> None:
    """Feed a canonical, type-tagged, length-prefixed encoding of `obj` to the hash `h`."""

    def put(tag: bytes, data: bytes | memoryview = b"") -> None:
        h.update(tag + struct.pack("<Q", len(data)))
        h.update(data)

    if isinstance(obj, torch.Tensor):
        put(b"T", f"{obj.dtype}{tuple(obj.shape)}".encode())
        put(b"B", _tensor_bytes(obj))
    elif isinstance(obj, (np.ndarray, np.generic)):  # raw bytes: NumPy's reprs differ between versions
        put(b"N", f"{obj.dtype.str}{obj.shape}".encode())
        put(b"B", np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        put(b"D", str(len(obj)).encode())
        for key, value in obj.items():
            _walk(key, h)
            _walk(value, h)
    elif isinstance(obj, (list, tuple)):
        put(b"L", str(len(obj)).encode())
        for value in obj:
            _walk(value, h)
    elif isinstance(obj, (set, frozenset)):
        put(b"S", repr(sorted(map(repr, obj))).encode())
    elif isinstance(obj, (bytes, bytearray)):
        put(b"Y", bytes(obj))
    else:  # str, numbers, None, bool, dtypes: a stable repr with the type
        put(b"V", f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}".encode())


def content_hash(obj: Any) -> str:
    """SHA-256 over everything in `obj`: dicts (keys in order), lists/tuples, tensors (dtype, shape, raw bytes),
    NumPy arrays, other leaves by type and repr."""
    h = hashlib.sha256()
    _walk(obj, h)
    return h.hexdigest()


def seal(obj: dict) -> dict:
    """`obj` plus its content hash under HASH_KEY (any previous one replaced). A training state is marked
    SEALED_FORMAT, so that a file whose hash key was damaged is refused rather than read unverified."""
    body = {k: v for k, v in obj.items() if k != HASH_KEY}
    if body.get("format") == CHECKPOINT_FORMAT:
        body["format"] = SEALED_FORMAT
    return {**body, HASH_KEY: content_hash(body)}


def is_sealed(obj: Any) -> bool:
    """A dict that carries a content hash (or should: this framework's sealed checkpoint format)."""
    return isinstance(obj, dict) and (isinstance(obj.get(HASH_KEY), str) or obj.get("format") == SEALED_FORMAT)


def verify(obj: Any, name: str | Path) -> Any:
    """`obj` without its content hash when it matches; unsealed objects as they are; else one CheckpointError."""
    if not is_sealed(obj):
        return obj
    body = {k: v for k, v in obj.items() if k != HASH_KEY}
    stored = obj.get(HASH_KEY)
    if not isinstance(stored, str):
        raise CheckpointError(f"{name}: corrupt checkpoint (its content hash is missing); nothing was loaded")
    if content_hash(body) != stored:
        raise CheckpointError(f"{name}: corrupt checkpoint (content hash mismatch: the file changed after it was "
                              "written); nothing was loaded")
    return body


# ----------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a weight file (a checkpoint dict, or a state dict), read on CPU without running
    pickled code (`torch.load(weights_only=True)`, or safetensors) and verified when sealed. Every unusable file
    is one `CheckpointError` line naming it; a missing one a `FileNotFoundError`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a weight file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a weight file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with torch.serialization.safe_globals(NUMPY_SCALARS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # a damaged header: the error says it
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except OSError as exc:  # torch reports a truncated archive as EINVAL
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EIO):
            raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from None
        raise CheckpointError(f"{path}: {_unreadable(path)}") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:  # e.g. `torch.save(model)`: unpickling it would run code named by the file
            raise CheckpointError(
                f"{path}: not a plain state dict: the file pickles a Python object ({found.group(1)}), which is "
                "not loaded because unpickling it could run code from the file; save `model.state_dict()` "
                "instead") from None
        raise CheckpointError(f"{path}: {_unreadable(path)}") from None
    except Exception:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: {_unreadable(path)}") from None
    return verify(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file as load_safetensors

    try:
        return load_safetensors(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def _unreadable(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"PK"):
        return "truncated or damaged PyTorch file (its zip archive cannot be read)"
    try:
        head.decode("utf-8")
        if b"\0" not in head:
            return "a text file, not a PyTorch weight file"
    except UnicodeDecodeError:
        pass
    return "not a PyTorch weight file (unrecognised content)"


def load_file(path: str | Path) -> dict:
    """`read_checkpoint` of a file that must hold a dict (a checkpoint or a state dict)."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------- writing


def _named_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))


def nonfinite_tensors(state: Any) -> list[str]:
    """Keys of the floating tensors of a (nested) state dict that hold a NaN or an infinity."""
    named = [(k, t) for k, t in _named_tensors(state) if (t.is_floating_point() or t.is_complex()) and t.numel()]
    if not named:
        return []
    flags = [torch.isfinite(t.detach()).all() for _, t in named]
    one_device = len({f.device for f in flags}) == 1
    finite = torch.stack(flags).tolist() if one_device else [bool(f) for f in flags]  # one sync on one device
    return [k for (k, _), ok in zip(named, finite) if not ok]


def _previous(path: Path) -> str:
    return f"the previous {path.name} is intact" if path.is_file() else "no previous checkpoint"


def _free_mb(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free // 2**20} MB free in {folder}"
    except OSError:
        return f"free space of {folder} unknown"


def write_failure(path: str | Path, exc: BaseException) -> str:
    """'cannot write <path>: <reason>; the previous <name> is intact' (or 'no previous checkpoint')."""
    path = Path(path)
    cause = exc if isinstance(exc, OSError) else next(
        (e for e in (exc.__cause__, exc.__context__) if isinstance(e, OSError)), None)
    code = cause.errno if cause is not None else errno.ENOSPC  # torch's own message: its writer ran out of room
    if code == errno.ENOSPC:
        reason = f"no space left on device ({_free_mb(path.parent)})"
    elif code == getattr(errno, "EDQUOT", -1):
        reason = f"disk quota exceeded ({_free_mb(path.parent)})"
    else:
        reason = (cause.strerror if cause is not None else None) or str(cause or exc)
    return f"cannot write {path}: {reason}; {_previous(path)}"


def save_checkpoint(path: str | Path, obj: dict) -> Path:
    """Write `obj` sealed with its content hash, atomically (the previous file stays until the new one is
    complete). Refuses a model (`obj["model"]`) with non-finite weights and reports a failed write (full disk,
    quota, I/O error) as one `RunError` line; either way nothing is written and the previous file is intact."""
    path = Path(path)
    bad = nonfinite_tensors(obj.get("model"))
    if bad:
        raise RunError(f"not writing {path}: {len(bad)} tensor(s) of the model are not finite (first: {bad[0]}); "
                       f"{_previous(path)}")
    sealed = seal(obj)
    try:
        return torch_save(path, sealed)
    except OSError as exc:
        raise RunError(write_failure(path, exc)) from None
    except RuntimeError as exc:
        if not TORCH_WRITE_FAILURES.search(str(exc)):
            raise
        raise RunError(write_failure(path, exc)) from None


# ----------------------------------------------------------------------------- training state and --resume


def is_training_checkpoint(obj: Any) -> bool:
    """True for checkpoints written by this framework's trainer (resumable)."""
    return isinstance(obj, dict) and obj.get("format") in (CHECKPOINT_FORMAT, SEALED_FORMAT)


_DESCRIBERS: list[Callable[[dict], str]] = []


def register_state_describer(describe: Callable[[dict], str]) -> None:
    """Let messages say what a state dict looks like (models.weights registers `looks_like`)."""
    _DESCRIBERS[:] = [describe]


def describe_state(state: Any) -> str:
    """What a model state dict looks like, for messages."""
    if not isinstance(state, dict) or not state:
        return "no model weights"
    if _DESCRIBERS:
        return _DESCRIBERS[0](state)
    return f"keys {', '.join(sorted(map(str, state))[:4])}"


def _listing(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "iter_in_epoch", "global_step", "rng", "best")


def load_resumable(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """A verified training checkpoint of this framework whose model state fits `model` exactly (same keys and
    shapes) and whose optimizer state fits `optimizer` (same groups and sizes); else one `CheckpointError`."""
    obj = load_file(path)
    if not is_training_checkpoint(obj):
        raise CheckpointError(
            f"{path} is not a resumable training checkpoint of this framework (no optimizer/RNG state; it holds "
            f"{describe_state(_model_state(obj))}); to start from its weights pass it as --checkpoint")
    absent = [k for k in TRAINING_KEYS if k not in obj]
    if absent:
        raise CheckpointError(f"{path}: an incomplete training checkpoint (no {', '.join(absent)})")
    state, own = obj["model"], unwrap(model).state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: an incomplete training checkpoint (its model is a {type(state).__name__})")
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        theirs, ours = describe_state(state), describe_state(own)
        what = f"its model looks like {theirs}, this run's like {ours}" if theirs != ours else "another key set"
        raise CheckpointError(f"{path}: not a checkpoint of this run's model ({what}): missing "
                              f"[{_listing(missing)}], unexpected [{_listing(unexpected)}]")
    for key, value in own.items():
        theirs = state[key]
        if not isinstance(theirs, torch.Tensor) or theirs.shape != value.shape:
            shape = tuple(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs).__name__
            raise CheckpointError(f"{path}: {key} has shape {shape} in the checkpoint, the model expects "
                                  f"{tuple(value.shape)} (a different config or vocabulary?)")
    if optimizer is not None and isinstance(obj["optimizer"], dict):
        saved = [len(g.get("params", ())) for g in obj["optimizer"].get("param_groups", ())]
        ours_groups = [len(g["params"]) for g in optimizer.param_groups]
        if saved != ours_groups:
            raise CheckpointError(f"{path}: its optimizer state has parameter groups of {saved} tensors, this run's "
                                  f"optimizer {ours_groups} (resume with the config the checkpoint was written with)")
    return obj


def _model_state(obj: dict) -> Any:
    inner = obj.get("model", obj.get("state_dict", obj))
    return inner if isinstance(inner, dict) else {}


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    *,
    epoch: int,
    iter_in_epoch: int,
    global_step: int,
    config: dict,
    rng: dict,
    best: dict | None = None,
    extra: dict | None = None,
    model_card: dict | None = None,
) -> dict:
    """Everything `--resume` needs to continue exactly (the model under `model`, as published files), and the
    model card (inference.card) that `inference.load_model` rebuilds the model from."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "iter_in_epoch": iter_in_epoch,
        "global_step": global_step,
        "config": config,
        "rng": rng,
        "best": best or {},
        "extra": extra or {},
        **({"model_card": model_card} if model_card else {}),
    }

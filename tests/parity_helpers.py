"""Shared pieces of the golden parity tests (tests/test_parity_*.py): the fixture folder, one-thread runs,
recording of intermediate values, strict weight loading and tolerance checks.

The fixtures were made by running the published Fashion-FINE and ASEN++ code at tiny sizes on CPU; their
folder is read from FASHIONFINE_PARITY_DIR. Without it the tests skip, or fail under CI=true.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models.weights import WeightReport, load_weights

ENV = "FASHIONFINE_PARITY_DIR"
ROOT = Path(__file__).resolve().parents[1]
# abs tolerances are scaled by max(1, max|ref|) where the README says so ("scaled")
LOSS_REL, EMB_ABS, FEAT_SCALED, GRAD_REL, KEY_BIAS_ABS, STATE_ABS = 1e-5, 1e-5, 1e-5, 1e-4, 1e-6, 1e-6
KEY_BIAS_SUFFIXES = ("attention.self.key.bias", "crossattention.self.key.bias")

# group -> largest deviation seen in this session (printed with `pytest -s`, for the record)
MEASURED: dict[str, float] = defaultdict(float)


def print_measured(*prefixes: str) -> None:
    """Print the largest deviation of each group whose name starts with one of `prefixes`."""
    for group, dev in sorted(MEASURED.items()):
        if group.startswith(prefixes):
            print(f"parity {group}: max deviation {dev:.3g}")


def fixture_path(name: str) -> Path:
    """`$FASHIONFINE_PARITY_DIR/name`; skips (fails under CI=true) when the folder or file is missing."""
    folder = os.environ.get(ENV, "")
    reason = None
    if not folder:
        reason = f"{ENV} is not set (folder of the golden parity fixtures)"
    elif not (Path(folder) / name).is_file():
        reason = f"{ENV}={folder}: {name} not found"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return Path(folder) / name


def load_fixture(name: str) -> dict[str, Any]:
    return torch.load(fixture_path(name), weights_only=True)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch.set_num_threads(1) for the block (the fixtures were produced on one thread), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def detached(value: Any) -> Any:
    """A deep copy of the tensors in `value` (tuples, lists and dicts followed), cut from the graph."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(detached(v) for v in value)
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    return value


class Recorder:
    """Records the arguments and results of chosen functions/methods and module forwards during a run.

    `calls[name]` lists `(args, kwargs, result)` per call (tensors detached); everything is undone on exit.
    """

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[tuple, dict, Any]]] = defaultdict(list)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, name: str | None = None) -> None:
        """Record every call of `owner.attr` (a module-level function or an instance's method)."""
        name = name or attr
        original = getattr(owner, attr)
        own = isinstance(owner, nn.Module) and attr in owner.__dict__

        def recorded(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.calls[name].append((detached(args), detached(kwargs), detached(out)))
            return out

        setattr(owner, attr, recorded)
        if isinstance(owner, nn.Module) and not own:
            self._undo.append(lambda: owner.__dict__.pop(attr, None))
        else:
            self._undo.append(lambda: setattr(owner, attr, original))

    def hook(self, module: nn.Module, name: str) -> None:
        """Record the outputs of `module`'s forward."""
        handle = module.register_forward_hook(
            lambda _m, args, out: self.calls[name].append((detached(args), {}, detached(out))))
        self._undo.append(handle.remove)

    def out(self, name: str, i: int = 0) -> Any:
        return self.calls[name][i][2]

    def arg(self, name: str, i: int = 0, pos: int = 0) -> Any:
        return self.calls[name][i][0][pos]

    def outs(self, name: str, where: Callable[[tuple, dict], bool] = lambda a, k: True) -> list[Any]:
        return [out for args, kwargs, out in self.calls[name] if where(args, kwargs)]

    def close(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def online(args: tuple, kwargs: dict) -> bool:
    """Filter for `project_image`/`project_text` calls of the online (not momentum) projections."""
    return not (kwargs.get("momentum", False) or (len(args) > 1 and args[1]))


def momentum(args: tuple, kwargs: dict) -> bool:
    return not online(args, kwargs)


# ----------------------------------------------------------------------------- weights


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], family: str) -> WeightReport:
    """Load a fixture state dict with the project's loader (strict) and check that nothing was missing,
    ignored, dropped or changed: every model tensor comes from the file as given."""
    report = load_weights(model, dict(state), family=family, strict=True, source_name=f"parity {family}")
    own = model.state_dict()
    assert not report.missing and not report.unexpected and not report.dropped, report.summary()
    assert report.loaded == len(own), report.summary()
    if family != "asen":  # ASEN++: the published layout stores the shared attribute table twice
        assert set(own) == set(state), sorted(set(own) ^ set(state))[:8]
        changed = [k for k in state if not torch.equal(own[k], state[k])]
        assert not changed, f"weights not loaded as given: {changed[:8]}"
    return report


# ----------------------------------------------------------------------------- comparisons


def rel_dev(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|a - b| / max|b| (for a scalar |a - b| / |b|)."""
    ours, ref = ours.detach().double(), ref.detach().double()
    return float((ours - ref).abs().max() / ref.abs().max())


def abs_dev(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.detach().double() - ref.detach().double()).abs().max())


def check(group: str, name: str, ours: torch.Tensor, ref: torch.Tensor, *, rel: float | None = None,
          abs_: float | None = None, scaled: float | None = None) -> float:
    """Assert one tolerance (rel, abs, or abs scaled by max(1, max|ref|)) and record the deviation."""
    ours = torch.as_tensor(ours)
    ref = torch.as_tensor(ref)
    assert ours.shape == ref.shape, f"{group} {name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    if rel is not None:
        dev, tol = rel_dev(ours, ref), rel
    elif abs_ is not None:
        dev, tol = abs_dev(ours, ref), abs_
    else:
        assert scaled is not None
        dev, tol = abs_dev(ours, ref), scaled * max(1.0, float(ref.abs().max()))
    MEASURED[group] = max(MEASURED[group], dev)
    assert dev <= tol, f"{group} {name}: deviation {dev:.3g} > tolerance {tol:.3g}"
    return dev


def check_exact(group: str, name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    ours, ref = torch.as_tensor(ours), torch.as_tensor(ref)
    assert ours.shape == ref.shape and torch.equal(ours.to(ref.dtype), ref), \
        f"{group} {name}: {ours.tolist()} != reference {ref.tolist()}"


def check_losses(group: str, ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
                 names: dict[str, str] | None = None) -> None:
    """Our named losses against the published ones (`names`: published name -> ours), rel 1e-5 each."""
    names = names or {k: k for k in ref}
    assert sorted(ours) == sorted(names.values()), f"loss names {sorted(ours)} vs {sorted(names.values())}"
    for theirs, mine in names.items():
        check(group, theirs, ours[mine], ref[theirs], rel=LOSS_REL)


def check_grads(group: str, ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """rel 1e-4 per tensor; the key-bias gradients (zero in exact arithmetic) abs 1e-6."""
    missing, extra = sorted(set(ref) - set(ours)), sorted(set(ours) - set(ref))
    assert not missing and not extra, f"{group}: gradients missing {missing[:8]}, not in the reference {extra[:8]}"
    for key, value in ref.items():
        if key.endswith(KEY_BIAS_SUFFIXES):
            check(f"{group} key-bias", key, ours[key], value, abs_=KEY_BIAS_ABS)
        else:
            check(group, key, ours[key], value, rel=GRAD_REL)


def check_state_after(group: str, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                      ref: dict[str, torch.Tensor]) -> None:
    """The entries the forward changed: floats abs 1e-6, integers (pointers, id queues) exact; every entry the
    published forward left alone must be unchanged here too."""
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    extra = sorted(set(changed) - set(ref))
    assert not extra, f"{group}: the forward changed entries the published one did not: {extra[:8]}"
    for key, value in ref.items():
        if value.is_floating_point():
            check(group, key, after[key], value, abs_=STATE_ABS)
        else:
            check_exact(group, key, after[key], value)

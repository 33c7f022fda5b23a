"""CPU runs on a busy machine: every entry point sets OpenMP's PASSIVE wait policy before torch loads OpenMP
(a spinning policy made CPU training 10-30x slower under background load; benchmarks/cpu_load.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["pretrain.py", "retrieval.py", "tgir.py", "train_blip.py", "asen_main.py"]

# Reports the wait policy in the environment at the moment `torch` is first imported, then runs `--help`.
SPY = """
import os, runpy, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("policy at torch import:", os.environ.get("OMP_WAIT_POLICY"), flush=True)
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, Spy())
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(extra)
    return env


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_import_engine_first(entry: str) -> None:
    """The package `engine` sets the policy; an entry point must import it before anything that loads torch."""
    tree = ast.parse((ROOT / entry).read_text(encoding="utf-8"))
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    first = imports[0]
    module = first.module if isinstance(first, ast.ImportFrom) else first.names[0].name
    assert module is not None and module.split(".")[0] == "engine", f"{entry} first imports {module}"


def test_wait_policy_is_passive_before_torch_loads() -> None:
    out = subprocess.run([sys.executable, "-c", SPY, "retrieval.py"], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert "policy at torch import: PASSIVE" in out.stdout, out.stdout[-500:] + out.stderr[-500:]


def test_users_wait_policy_is_kept() -> None:
    out = subprocess.run([sys.executable, "-c", SPY, "retrieval.py"], cwd=ROOT, env=_env(OMP_WAIT_POLICY="ACTIVE"),
                         capture_output=True, text=True, timeout=120)
    assert "policy at torch import: ACTIVE" in out.stdout, out.stdout[-500:] + out.stderr[-500:]

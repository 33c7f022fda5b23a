"""engine.host_memory: glibc malloc keeps freed blocks for reuse (its effect on the step's page faults is
measured in benchmarks/README.md, "Pretraining step per module"); a user's MALLOC_* settings win."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

import engine
from engine import host_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ),
                    reason="glibc malloc settings, not chosen by the environment")
def test_glibc_accepts_both_settings_on_import():
    assert engine.MALLOC_TUNED  # `import engine` applied them
    assert host_memory.keep_freed_memory()  # applying them again is harmless
    # values mallopt takes as a C int: a larger trim threshold would wrap around (to 0: trim at every free)
    assert 0 < host_memory.TRIM_THRESHOLD <= 2**31 - 1 and 0 < host_memory.MMAP_THRESHOLD <= 2**31 - 1
    assert ctypes.c_int(host_memory.TRIM_THRESHOLD).value == host_memory.TRIM_THRESHOLD


def test_a_users_malloc_variables_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert not host_memory.keep_freed_memory()

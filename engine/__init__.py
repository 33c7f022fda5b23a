"""Shared training machinery: configs, distribution, data loading, optimisation, checkpoints, logging, loop.

Importing the package sets OpenMP's wait policy to PASSIVE unless the environment chooses one. It has to happen
before torch loads its OpenMP runtime, which is why every entry point imports `engine` first. With the default
(spinning) policy, intra-op threads that wait for a descheduled peer burn their time slice: on a 2-core machine
with two other busy processes an ASEN++ step took 10-30x its quiet time, with PASSIVE 1.7x; on a quiet machine
both policies are equally fast (benchmarks/README.md, "CPU training on a busy machine"). It also sets glibc's
malloc to keep freed memory for reuse (`engine.host_memory`), so CPU steps do not page-fault their tensors in again.
"""

import os
import sys

# torch already loaded (a notebook, pytest, a user's script): its OpenMP runtime has read the policy already.
POLICY_IN_EFFECT = "torch" not in sys.modules or "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.host_memory import keep_freed_memory  # noqa: E402

MALLOC_TUNED = keep_freed_memory()

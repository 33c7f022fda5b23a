"""Run under a launcher with 2 processes: collectives and a few training steps through the engine.

Each rank writes `<out>/rank<r>.json` with what it observed; tests/test_distributed.py compares them.

`ddp_probe.py OUT train EPOCHS DELAY_S TIMEOUT_S [STALL_S]`: instead, train the toy task into OUT through
`engine.run.run_main` (its exit statuses and one-line errors), each item fetch slowed by DELAY_S so that a
test can signal, stop or kill a rank mid-training (tests/test_fault_training.py); any launcher or none.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine import distributed as du  # noqa: E402
from engine.distributed import init_distributed  # noqa: E402
from tests.engine_toy import run_toy  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    info = init_distributed("cpu")
    rank = info.rank
    gathered = du.all_gather_nograd(torch.tensor([rank * 10, rank * 10 + 1]))
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    g = du.all_gather_with_grad(x)
    (g * torch.arange(g.shape[0], dtype=torch.float32)[:, None]).sum().backward()
    obj = du.broadcast_object({"from": rank})
    trainer, result = run_toy(out / "run", epochs=2, evaluate=False)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.module.parameters())).hexdigest()
    seen = sorted(int(i) for batch in trainer.loader for i in batch["index"])
    record = {
        "rank": rank, "local_rank": info.local_rank, "world": info.world_size, "backend": info.backend,
        "gathered": gathered.tolist(),
        "grad": x.grad.tolist(), "broadcast": obj, "digest": digest, "steps": result.global_step, "indices": seen,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    du.cleanup()


def train(out: Path, epochs: int, delay: float, timeout_s: float, stall_s: float = 0) -> None:
    """The toy training of tests.engine_toy.run_toy (same numbers), slowed down, under run_main."""
    import time

    import tests.engine_toy as toy
    from engine.run import run_main

    fetch = toy.NoisyRegression.__getitem__

    def slow(self: toy.NoisyRegression, index: int) -> dict:
        time.sleep(delay)
        return fetch(self, index)

    toy.NoisyRegression.__getitem__ = slow  # type: ignore[method-assign]

    def run(argv: list[str] | None) -> int:
        init_distributed("cpu", timeout_s=timeout_s, stall_timeout_s=stall_s)
        run_toy(out, epochs=epochs)
        return 0

    run_main(run)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "train":
        train(Path(sys.argv[1]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
              float(sys.argv[6]) if len(sys.argv) > 6 else 0)
    else:
        main()

"""Run under a launcher with 2 processes: collectives and a few training steps through the engine.

Each rank writes `<out>/rank<r>.json` with what it observed; tests/test_distributed.py compares them.
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
        "rank": rank, "world": info.world_size, "backend": info.backend, "gathered": gathered.tolist(),
        "grad": x.grad.tolist(), "broadcast": obj, "digest": digest, "steps": result.global_step, "indices": seen,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    du.cleanup()


if __name__ == "__main__":
    main()

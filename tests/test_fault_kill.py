"""`kill -9` at random moments of a training run that checkpoints every step: whatever is left on disk is a
complete, verified checkpoint (or none), and resuming from it, again and again, ends with the uninterrupted
run's final weights bit for bit (CPU).

The suite kills 3 times; `FASHIONFINE_KILLS=20 bash scripts/test.sh tests/test_fault_kill.py` runs the
20-kill version (about 80 s on 2 cores).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from engine.checkpoint import load_file

ROOT = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("FASHIONFINE_KILLS", "3"))
EPOCHS = max(20, 3 * KILLS)  # 8 steps per epoch; each kill lets ~0.3 s (~15 steps) of work through

CHILD = """
import sys
from pathlib import Path
import torch
from tests.engine_toy import run_toy
torch.set_num_threads(1)
out = Path(sys.argv[1])
last = out / "checkpoint_last.pth"
print("ready", flush=True)
trainer, result = run_toy(out, epochs=int(sys.argv[2]), train={"checkpoint_every": 1},
                          resume=str(last) if last.is_file() else None)
torch.save(trainer.module.state_dict(), out / "final_weights.pt")
print("done", result.global_step, flush=True)
"""


def start(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(EPOCHS)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def run_to_end(folder: Path) -> dict[str, torch.Tensor]:
    proc = start(folder)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and f"done {EPOCHS * 8}" in out, out
    return torch.load(folder / "final_weights.pt")


def assert_verified_or_absent(folder: Path) -> None:
    for name in ("checkpoint_last.pth", "checkpoint_best.pth"):
        if (folder / name).exists():
            load_file(folder / name)  # raises on a partial or corrupt file (content hash)


def test_kill_9_at_random_moments_leaves_verified_checkpoints_and_resume_is_exact(tmp_path):
    reference = run_to_end(tmp_path / "reference")
    folder, rng = tmp_path / "killed", random.Random(0)
    kills = 0
    for _ in range(KILLS):
        proc = start(folder)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        proc.stdout.close()
        assert_verified_or_absent(folder)
    assert kills == KILLS, "every kill should land before the run ends (raise EPOCHS)"
    final = run_to_end(folder)
    assert final.keys() == reference.keys()
    for key in reference:
        assert torch.equal(final[key], reference[key]), key

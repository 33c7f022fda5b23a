"""benchmarks/gpu_check.py: the CPU dry run writes every part's JSON object; failures set the exit status."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("restore_torch_globals")


# every part but the compiled step: dynamo's tracing of even the tiny model takes over a minute on 2 cores
FAST_PARTS = [p for p in gpu_check.PARTS if p != "pretrain_compiled"]


def test_dry_run_writes_every_part(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--parts", *FAST_PARTS]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert list(report["parts"]) == FAST_PARTS
    parts = report["parts"]
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part["status"])
    eager = parts["pretrain_eager"]
    assert eager["compiled"] is False and eager["batch_size"] == 4 and eager["mfu"] is None
    assert eager["samples_per_s"] > 0 and eager["flops_per_step"] > 0 and eager["peak_memory_GiB"] >= 0  # CPU: growth of the peak RSS, 0 after bigger tests
    assert all(math.isfinite(v) for v in eager["losses"].values())
    cmr = parts["cmr_eval"]
    assert cmr["encode_image_per_s"] > 0 and cmr["encode_text_per_s"] > 0
    assert cmr["rank_i2t_s"] > 0 and cmr["full_protocol_s"] > 0 and cmr["rank_t2i_s"] > 0  # no timing order: load
    blip = parts["blip_step"]
    assert blip["published_ckpt"]["ckpt_layers"] == 4 and blip["no_ckpt"]["ckpt_layers"] == 0
    assert blip["published_ckpt"]["step_ms"] > 0 and blip["no_ckpt"]["samples_per_s"] > 0
    asen = parts["asen_map"]
    assert asen["max_map_difference_same_scores"] <= 1e-9 and asen["seconds_best"] > 0
    nccl = parts["nccl_two_process"]
    assert nccl["backend"] == "gloo" and nccl["world_size"] == 2 and nccl["all_gather_ok"] is True
    assert nccl["ddp_loss_finite"] is True and nccl["ddp_samples_per_s"] > 0 and nccl["all_reduce_bus_GBps"] > 0


def test_compiled_part_takes_the_flops_of_the_eager_part(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import pretrain_step

    seen = []

    def fake_main(argv):  # what `pretrain_step.py --compile --json` writes on a GPU (no FLOP count of its own)
        seen.append(argv)
        out = Path(argv[argv.index("--json") + 1])
        out.write_text(json.dumps({
            "config": "configs/pretrain.yaml", "batch_size": 64, "precision": "bf16", "device_name": "GPU",
            "samples_per_s": 640.0, "step_ms_median": 100.0, "step_ms_min": 99.0, "peak_memory_GiB": 30.0,
            "losses": {"itc": 1.0}, "runs": {"compiled": {"compile_s": 50.0, "graph_breaks": 0, "recompiles": 0}}}))
        return 0

    monkeypatch.setattr(pretrain_step, "main", fake_main)
    monkeypatch.setattr(gpu_check, "pretrain_has_compile", lambda: True)
    args = gpu_check.main.__globals__["argparse"].Namespace(dry_run=False, peak_tflops=1000.0)
    part = gpu_check.pretrain_part(args, torch.device("cpu"), compiled=True, eager_flops=lambda: 4.5e13)
    assert "--compile" in seen[0] and seen[0][seen[0].index("--warmup") + 1] == "3"
    assert part["mfu"] == pytest.approx(4.5e13 / 0.1 / 1e15) and part["compile_s"] == 50.0
    assert part["peak_memory_GiB"] == 30.0 and part["compile_backend"] == "inductor"


def test_a_failed_part_is_recorded_and_sets_the_exit_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args, device):
        raise RuntimeError("out of\nmemory")

    monkeypatch.setattr(gpu_check, "asen_part", broken)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--dry-run", "--parts", "asen_map", "--out", str(out)]) == 1
    part = json.loads(out.read_text())["parts"]["asen_map"]
    assert part["status"] == "failed: RuntimeError: out of memory"


def test_nccl_part_needs_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = gpu_check.main.__globals__["argparse"].Namespace(dry_run=False)
    result = gpu_check.run_part(lambda: gpu_check.nccl_part(args, torch.device("cuda")))
    assert result["status"] == "skipped: needs 2 GPUs, this machine has 1"


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 2
        assert "--dry-run" in capsys.readouterr().err


@pytest.mark.parametrize("status", [0, 1])
def test_shell_script_passes_arguments_and_exit_status(tmp_path: Path, status: int) -> None:
    log = tmp_path / "args.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {log}\nexit {status}\n')
    fake.chmod(0o755)
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", "x.json"], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)})
    assert run.returncode == status
    assert log.read_text().splitlines() == ["benchmarks/gpu_check.py", "--dry-run", "--out", "x.json"]


def test_step_profile_labels_cover_the_step(tmp_path: Path) -> None:
    from benchmarks import step_profile

    out = tmp_path / "profile.json"
    md = tmp_path / "profile.md"
    assert step_profile.main(["--tiny", "--warmup", "0", "--steps", "1", "--label-steps", "1", "--profile-steps", "1",
                              "--threads", "1", "--json", str(out), "--markdown", str(md)]) == 0
    r = json.loads(out.read_text())
    fwd, bwd = r["forward_ms"], r["backward_ms"]
    # the exclusive labels add up to the forward's wall time (the rest is the hooks' own cost)
    assert 0.8 * r["labelled_forward_ms"] <= fwd["total"] <= r["labelled_forward_ms"] * 1.01
    for label in (step_profile.VIT, step_profile.VIT_M, step_profile.TXT, step_profile.TXT_M, step_profile.FUS_POS,
                  step_profile.FUS_NEG, step_profile.MLM_HEAD, step_profile.MLM_LOSS, step_profile.EMA,
                  step_profile.QUEUE, step_profile.ITC, step_profile.POOL, step_profile.NGRAM):
        assert fwd[label] > 0, label
    # every backward node is charged to a label; the momentum copies have none
    assert bwd[step_profile.VIT] > 0 and bwd[step_profile.FUS_NEG] > 0 and bwd[step_profile.MLM_HEAD] > 0
    assert bwd.get(step_profile.UNLABELLED, 0.0) <= 0.02 * bwd["total"]
    assert step_profile.VIT_M not in bwd and step_profile.EMA not in bwd
    assert bwd["total"] == pytest.approx(r["profiled_backward_ms"], rel=1e-6)
    assert len(r["top_ops"]) == 15 and "| **forward total (label-stack steps)** |" in md.read_text()

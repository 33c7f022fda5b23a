"""Training curves: log.jsonl records (timestamps, samples/s, the final evaluation), `--report-to tensorboard`
event files equal to log.jsonl, the W&B backend and its missing-package error, and scripts/plot_run.py."""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import struct
import sys
import time
import types
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

import asen_main
import retrieval
from engine.config import ConfigError
from engine.run import run_main
from engine.tracking import Tracker, scalars_of
from scripts import plot_run
from tests.asen_helpers import synthetic_asen, tiny_args

CONFIG = "configs/retrieval_tiny.yaml"
BATCH = 16  # data.batch_size of fine_tiny.yaml: 220 training products -> 13 steps per epoch
FAST = ["model.vision.image_res=32", "data.max_words=32", "runtime.num_workers=0", "runtime.cpu_threads=1",
        "train.epochs=1", "data.heldout_products=20", "eval.sampled.set_len=20", "train.progress_bar=false",
        "train.log_every=3"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def retrieval_args(root: Path, out: Path, *flags: str, sets: tuple[str, ...] = ()) -> list[str]:
    return ["--config", CONFIG, "--output_dir", str(out), *flags, "--set", f"data.root={root / 'fashiongen'}",
            f"data.tokenizer={root / 'tokenizer'}", *FAST, *sets]


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard event files: tag -> [(step, value)]."""
    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


pytestmark = pytest.mark.usefixtures("restore_torch_globals")  # tests/conftest.py


@pytest.fixture(scope="module")
def tracked_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float]:
    """One epoch of retrieval.py with `--report-to tensorboard`: (output folder, start time, end time)."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    start = time.time()
    assert retrieval.main(retrieval_args(synthetic_root, out, "--report-to", "tensorboard")) == 0
    return out, start, time.time()


# ----------------------------------------------------------------------------- log.jsonl and TensorBoard


def test_log_jsonl_records_have_time_samples_per_s_and_a_final_record(tracked_run):
    out, start, end = tracked_run
    log = records(out)
    assert all(isinstance(r["time"], float) and start <= r["time"] <= end for r in log)
    assert [r["time"] for r in log] == sorted(r["time"] for r in log)
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [3, 6, 9, 12, 13]  # log_every 3 and the epoch's last step
    # samples/s x seconds between records = samples of the steps in between (batch 16, one process)
    for before, after in zip(train, train[1:]):
        samples = after["samples_per_s"] * (after["time"] - before["time"])
        assert round(samples / BATCH) == after["step"] - before["step"], (before, after)
    assert [r["kind"] for r in log].count("final") == 1 and log[-1]["kind"] == "final"
    final, report = log[-1], json.loads((out / "results_test.json").read_text())
    assert final["checkpoint"] == str(out / "checkpoint_best.pth") and final["step"] == 13
    assert {k: final[k] for k in report["metrics"]} == pytest.approx(report["metrics"])


def test_tensorboard_scalars_equal_log_jsonl(tracked_run):
    out, _, _ = tracked_run
    log, events = records(out), scalars(out)
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in log:
        for tag, value in scalars_of(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert set(events) == set(expected)
    assert {"train/loss", "train/itc", "train/itm", "train/lr", "train/samples_per_s", "train_epoch/loss",
            "eval/r_mean", "eval/full_sum", "final/r_mean", "final/tiny_sum"} <= set(events)
    for tag, points in expected.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert [s for s, _ in events["train/loss"]] == [3, 6, 9, 12, 13]
    assert [s for s, _ in events["eval/full_sum"]] == [s for s, _ in events["final/full_sum"]] == [13]


def test_evaluate_logs_the_final_record(synthetic_root, tracked_run, tmp_path):
    trained, _, _ = tracked_run
    checkpoint = str(trained / "checkpoint_best.pth")
    out = tmp_path / "eval"
    assert retrieval.main(retrieval_args(synthetic_root, out, "--evaluate", "--checkpoint", checkpoint,
                                         "--report-to", "tensorboard", sets=("eval.protocol=sampled",))) == 0
    (final,) = records(out)
    metrics = json.loads((out / "results_test.json").read_text())["metrics"]
    assert final["kind"] == "final" and final["step"] == 0 and final["checkpoint"] == checkpoint
    assert {k: final[k] for k in metrics} == pytest.approx(metrics)
    assert scalars(out)["final/tiny_sum"] == [(0, pytest.approx(metrics["tiny_sum"]))]


def test_tracker_of_other_ranks_writes_nothing(tmp_path):
    tracker = Tracker(tmp_path, ["tensorboard"], enabled=False)
    tracker.write({"kind": "train", "step": 1, "loss": 1.0})
    tracker.close()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- W&B


class FakeRun:
    def __init__(self, **kwargs) -> None:
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, data: dict, step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        self.finished = True


@pytest.mark.parametrize("env_mode", [None, "online"])
def test_wandb_backend_logs_offline_unless_wandb_mode_is_set(tmp_path, monkeypatch, env_mode):
    runs: list[FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    tracker = Tracker(tmp_path / "run", ["wandb"], config={"train": {"epochs": 1}})
    tracker.write({"kind": "train", "epoch": 0, "step": 4, "loss": 0.5, "lr": 1e-4})
    tracker.write({"kind": "final", "step": 4, "map": 12.5, "checkpoint": "x.pth"})
    tracker.close()
    (run,) = runs
    assert run.init["mode"] == ("offline" if env_mode is None else None)  # None: wandb reads WANDB_MODE
    assert run.init["dir"] == str(tmp_path / "run") and run.init["config"] == {"train": {"epochs": 1}}
    assert run.logged == [(4, {"train/loss": 0.5, "train/lr": 1e-4}), (4, {"final/map": 12.5})]
    assert run.finished and not (tmp_path / "run" / "tensorboard").exists()


def no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib then finds no wandb, installed or not


@pytest.mark.parametrize("how", [("--report-to", "wandb"), ("--set", "train.report_to=[tensorboard, wandb]")])
def test_missing_wandb_fails_in_one_line_before_training(synthetic_root, tmp_path, monkeypatch, capsys, how):
    no_wandb(monkeypatch)
    out = tmp_path / "run"
    argv = retrieval_args(synthetic_root, out)
    argv = [*argv[:4], *how, *argv[4:]] if how[0] == "--report-to" else [*argv, how[1]]
    with pytest.raises(SystemExit) as exc:
        run_main(lambda _: retrieval.main(argv))
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: wandb is not installed: pip install wandb"]
    assert not (out / "checkpoint_last.pth").exists() and not (out / "log.jsonl").exists()


@pytest.mark.parametrize("value", ["[tensorboard, tensorboard]", "[mlflow]"])
def test_bad_report_to_is_a_config_error(synthetic_root, tmp_path, value):
    with pytest.raises(ConfigError, match="report_to"):
        retrieval.main(retrieval_args(synthetic_root, tmp_path / "run", sets=(f"train.report_to={value}",)))


@pytest.mark.parametrize("how", [("--report-to", "wandb"), ("--set", "LOGGER.REPORT_TO=[wandb]")])
def test_asen_report_to_flag_and_key(tmp_path_factory, tmp_path, monkeypatch, how):
    no_wandb(monkeypatch)
    data = synthetic_asen(tmp_path_factory)
    argv = tiny_args(data, 1, tmp_path, "DATA.NUM_WORKERS=0")
    argv = [*argv, *how] if how[0] == "--report-to" else [*argv, how[1]]
    with pytest.raises(ConfigError, match="wandb is not installed: pip install wandb"):
        asen_main.main(argv)


# ----------------------------------------------------------------------------- scripts/plot_run.py


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def expected_panels(folder: Path) -> list[str]:
    """One panel per number of the train records, then per eval metric, in order of first appearance."""
    tags = [tag for kind in ("train", "eval") for r in records(folder) if r["kind"] == kind for tag in scalars_of(r)]
    return list(dict.fromkeys(tags))


def test_plot_one_run(tracked_run, capsys, monkeypatch):
    out, _, _ = tracked_run
    drawn: list[list[str]] = []
    plot_runs = plot_run.plot_runs
    monkeypatch.setattr(plot_run, "plot_runs", lambda *a, **k: drawn.append(plot_runs(*a, **k)) or drawn[-1])
    assert plot_run.main([str(out)]) == 0
    width, height = png_size(out / "curves.png")
    assert width > 500 and height > 500
    (panels,) = drawn
    assert panels == expected_panels(out)
    assert panels[:5] == ["train/itc", "train/itm", "train/loss", "train/lr", "train/samples_per_s"]
    assert "eval/full_sum" in panels and not any(p.startswith("final/") for p in panels)  # final: marks
    assert f"wrote {out / 'curves.png'} ({len(panels)} panels" in capsys.readouterr().out


def test_plot_two_runs_overlaid(tracked_run, tmp_path):
    out, _, _ = tracked_run
    other = tmp_path / "other"
    other.mkdir()
    lines = (out / "log.jsonl").read_text().splitlines()
    (other / "log.jsonl").write_text("\n".join(line for line in lines if '"kind": "train"' in line) + "\n")
    png = tmp_path / "both.png"
    assert plot_run.main([str(out), str(other), "--out", str(png), "--quantities", "loss", "lr",
                          "eval/full_sum"]) == 0
    assert png_size(png)[0] > 500
    assert plot_run.plot_runs([out, other], tmp_path / "all.png") == expected_panels(out)
    assert plot_run.run_labels([out, other]) == ["run", "other"]


def write_log(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text(text)
    return folder


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: d / "missing", "run folder not found: {d}/missing"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "{d}/empty/log.jsonl: not found"),
    (lambda d: write_log(d / "bad", '{"kind": "train", "step": 1, "loss": 1}\n\n{"kind": "train", "step": 2,\n'),
     "{d}/bad/log.jsonl, line 3: not valid JSON"),
    (lambda d: write_log(d / "list", '{"kind": "eval", "step": 1, "map": 1}\n[1, 2]\n'),
     "{d}/list/log.jsonl, line 2: not a metric record"),
])
def test_plot_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, message):
    folder = setup(tmp_path)
    assert plot_run.main([str(folder), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + message.format(d=tmp_path)), err
    assert not (tmp_path / "x.png").exists()


def test_plot_needs_out_for_several_runs_and_known_quantities(tracked_run, tmp_path, capsys):
    out, _, _ = tracked_run
    copy = shutil.copytree(out, tmp_path / "copy", ignore=shutil.ignore_patterns("*.pth", "tensorboard"))
    assert plot_run.main([str(out), str(copy)]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --out FILE.png is required with several runs"]
    assert plot_run.main([str(copy), "--quantities", "nope"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: no quantity 'nope' in the logs; available: train/itc")


def test_resume_logs_every_step_once(synthetic_root, tmp_path):
    """Records the interrupted process wrote after its last checkpoint are dropped on resume (log.jsonl and
    TensorBoard), so each step appears once, with the resumed run's value."""
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "run"
    assert retrieval.main(retrieval_args(synthetic_root, out, "--report-to", "tensorboard",
                                         sets=("train.stop_after_steps=6",))) == 0
    # What a process killed after step 6 had logged beyond its checkpoint.
    with open(out / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "train", "time": time.time(), "step": 9, "loss": 123.0}) + "\n")
    writer = SummaryWriter(log_dir=str(out / "tensorboard"))
    writer.add_scalar("train/loss", 123.0, global_step=9)
    writer.close()
    assert retrieval.main(retrieval_args(synthetic_root, out, "--report-to", "tensorboard", "--resume",
                                         str(out / "checkpoint_last.pth"))) == 0
    train_steps = [r["step"] for r in records(out) if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)) and 9 in train_steps and 13 in train_steps
    assert all(r.get("loss") != 123.0 for r in records(out))
    loss = scalars(out)["train/loss"]
    assert [s for s, _ in loss] == train_steps and all(v != 123.0 for _, v in loss)

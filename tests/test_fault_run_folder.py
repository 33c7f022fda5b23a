"""One run per output folder (engine.run_folder): a used folder is refused unless --overwrite, which removes only
the framework's files; a live run's lock refuses a second one and a killed run's lock is taken over; stale
temporary files go; --resume auto / FOLDER / FILE continue a run in its own folder, and a finished run resumed
there reports on its best checkpoint. In-process through the entry points' main(argv), except the process-level
cases (a lock held by another process, the exit status)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asen_main
import pretrain
import retrieval
import tgir
from engine.config import ConfigError
from engine.errors import RunError
from engine.run_folder import LOCK_NAME, RunFiles, RunLock, resolve_resume
from evaluation.report import load_report
from tasks.asen import AsenTask
from tasks.fashiongen import PretrainTask, RetrievalTask
from tasks.fine_blip import FineBlipTask
from tasks.tgir import TGIRTask
from tests.asen_helpers import synthetic_asen, tiny_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/retrieval_tiny.yaml"
FAST = ["model.vision.image_res=32", "data.max_words=32", "runtime.num_workers=0", "runtime.cpu_threads=1",
        "train.epochs=1", "data.heldout_products=20", "eval.sampled.set_len=20", "eval.protocol=full",
        "train.progress_bar=false", "train.log_every=1000"]


def argv(root: Path, out: Path | None, *flags: str, sets: tuple[str, ...] = ()) -> list[str]:
    folder = ["--output_dir", str(out)] if out is not None else []
    return ["--config", CONFIG, *folder, *flags, "--set", f"data.root={root / 'fashiongen'}",
            f"data.tokenizer={root / 'tokenizer'}", *FAST, *sets]


def cmr(root: Path, out: Path | None, *flags: str, sets: tuple[str, ...] = ()) -> int:
    return retrieval.main(argv(root, out, *flags, sets=sets))


pytestmark = pytest.mark.usefixtures("restore_torch_globals")  # tests/conftest.py


@pytest.fixture(scope="module")
def finished(synthetic_root, tmp_path_factory) -> Path:
    """One finished CMR run (one epoch, selection on held-out products): checkpoint_last/best, results."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cmr(synthetic_root, out) == 0
    return out


@pytest.fixture(scope="module")
def stopped(synthetic_root, tmp_path_factory) -> Path:
    """A CMR run stopped after 3 of its 13 steps (checkpoint_last.pth only)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert cmr(synthetic_root, out, sets=("train.stop_after_steps=3",)) == 0
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def log_of(folder: Path) -> str:
    return (folder / "log.txt").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- a used folder


@pytest.mark.parametrize("held,shown", [
    (("checkpoint_last.pth", "log.jsonl"), "checkpoint_last.pth, log.jsonl"),
    (("checkpoint_best.pth",), "checkpoint_best.pth"),
    (("checkpoint_epoch3.pth", "notes.txt"), "checkpoint_epoch3.pth"),
    (("log.jsonl",), "log.jsonl"),
])
def test_a_new_run_refuses_a_folder_with_another_run(synthetic_root, tmp_path, held, shown):
    out = tmp_path / "used"
    out.mkdir()
    for name in held:
        (out / name).write_bytes(b"x")
    before = snapshot(out)
    with pytest.raises(RunError) as info:
        cmr(synthetic_root, out)
    resume = f"continue it with --resume {out / 'checkpoint_last.pth'}, " if "checkpoint_last.pth" in held else ""
    assert str(info.value) == (f"{out} holds another run ({shown}): {resume}choose another --output_dir, or pass "
                               "--overwrite to replace it")
    assert snapshot(out) == before  # nothing written, not even the lock


def test_the_other_entry_points_refuse_too(synthetic_root, tmp_path, tmp_path_factory):
    out = tmp_path / "used"
    out.mkdir()
    (out / "checkpoint_last.pth").write_bytes(b"x")
    common = ["--output_dir", str(out), "--set", f"data.tokenizer={synthetic_root / 'tokenizer'}",
              "runtime.num_workers=0"]
    for main, args in ((pretrain.main, ["--config", "configs/pretrain_tiny.yaml", *common,
                                        f"data.root={synthetic_root / 'fashiongen'}"]),
                       (tgir.main, ["--config", "configs/tgir_tiny.yaml", *common,
                                    f"data.root={synthetic_root / 'fashioniq'}"])):
        with pytest.raises(RunError, match=f"^{out} holds another run \\(checkpoint_last.pth\\)"):
            main(args)
    data = synthetic_asen(tmp_path_factory)
    run_dir = tmp_path / "asen" / "synthetic_s1"
    run_dir.mkdir(parents=True)
    (run_dir / "model_best.pth.tar").write_bytes(b"x")
    with pytest.raises(RunError) as info:
        asen_main.main(tiny_args(data, 1, tmp_path / "asen"))
    assert str(info.value) == (f"{run_dir} holds another run (model_best.pth.tar): choose another SAVE_DIR or NAME, "
                               "or pass --overwrite to replace it")
    for task in (PretrainTask, RetrievalTask, TGIRTask, FineBlipTask, AsenTask):  # every entry point has the flag
        assert task.build_parser("").parse_args(["--overwrite"]).overwrite is True


def test_overwrite_removes_only_the_framework_files(synthetic_root, finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint_mine.pth").write_bytes(b"mine")
    (out / "checkpoint_epoch0.pth").write_bytes(b"x")  # an epoch checkpoint of the earlier run
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out").write_bytes(b"x")
    (out / "embeddings_colour.npz").write_bytes(b"x")
    assert cmr(synthetic_root, out, "--overwrite", sets=("train.stop_after_steps=1", "train.log_every=1")) == 0  # no best
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_last.pth", "checkpoint_mine.pth", "config.yaml",
                                                     "eval_sets", "log.jsonl", "log.txt", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint_mine.pth").read_bytes() == b"mine"
    log = log_of(out)
    assert (f"--overwrite: removed the previous run's checkpoint_best.pth, checkpoint_epoch0.pth, "
            f"checkpoint_last.pth, config.yaml, embeddings_colour.npz, log.jsonl, log.txt, results_test.json, "
            f"tensorboard/, topk_test_i2t.jsonl, topk_test_t2i.jsonl from {out}") in log
    assert "final evaluation of" not in log  # the earlier run's log is gone, not appended to
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]


def test_overwrite_keeps_the_run_inputs_and_trains_only(synthetic_root, finished, tmp_path):
    before = snapshot(finished)
    best = finished / "checkpoint_best.pth"
    with pytest.raises(RunError, match=f"^--overwrite would remove {best}, an input of this run"):
        cmr(synthetic_root, finished, "--overwrite", "--checkpoint", str(best))
    with pytest.raises(ConfigError, match="cannot be combined with --resume"):
        cmr(synthetic_root, finished, "--overwrite", "--resume", "auto")
    with pytest.raises(ConfigError, match="cannot be combined with an evaluation"):
        cmr(synthetic_root, tmp_path / "eval", "--overwrite", "--evaluate", "--checkpoint", str(best))
    assert snapshot(finished) == before


# ----------------------------------------------------------------------------- the lock


def test_a_live_run_holds_the_folder(synthetic_root, finished, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from engine.run_folder import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
                               "print('locked', flush=True); sys.stdin.read()", str(out)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for flags in ((), ("--evaluate", "--checkpoint", str(finished / "checkpoint_best.pth"))):
            with pytest.raises(RunError) as info:
                cmr(synthetic_root, out, *flags)
            message = str(info.value)
            assert message.startswith(f"{out} is in use by another run (pid {holder.pid} on ") and message.endswith(
                f"; lock {out / LOCK_NAME}): wait for it to end or choose another output folder")
            assert ", started 20" in message
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    finally:
        holder.communicate("", timeout=60)
    lock = RunLock(out)  # the holder is gone: the lock file it left is free again
    assert "pid" in lock.acquire()
    lock.release()
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("how", ["auto", "folder"])
def test_a_killed_run_resumes_taking_over_its_lock_and_removing_its_temp_files(synthetic_root, stopped, tmp_path,
                                                                                how):
    out = copy_run(stopped, tmp_path / "run")
    (out / LOCK_NAME).write_text("pid=4242\nhost=elsewhere\nstart=2001-01-01 00:00:00\n")
    temp = out / ".checkpoint_last.pth.0badc0de.tmp"  # an interrupted atomic save
    temp.write_bytes(b"partial")
    # auto = the run's own folder; a folder = its checkpoint_last.pth (the config names another folder)
    flags = ("--resume", "auto") if how == "auto" else ("--resume", str(out))
    assert cmr(synthetic_root, out if how == "auto" else None, *flags,
               sets=() if how == "auto" else (f"output_dir={tmp_path / 'elsewhere'}",)) == 0
    log = log_of(out)
    assert "took over the lock of a run that ended without releasing it (pid 4242 on elsewhere, started " \
           "2001-01-01 00:00:00)" in log
    assert f"removed 1 temporary file(s) of interrupted writes: {temp.name}" in log
    assert f"resumed from {out / 'checkpoint_last.pth'} at epoch 0, iteration 3 (step 3)" in log
    assert not temp.exists() and not (out / LOCK_NAME).exists() and not (tmp_path / "elsewhere").exists()
    assert torch.load(out / "checkpoint_last.pth", map_location="cpu", weights_only=False)["global_step"] == 13
    assert load_report(out / "results_test.json")["checkpoint"] == str(out / "checkpoint_best.pth")


# ----------------------------------------------------------------------------- --resume


LAST = "checkpoint_last.pth"


def _case_folders(tmp_path: Path) -> dict[str, Path]:
    own, other, empty = tmp_path / "own", tmp_path / "other", tmp_path / "empty"
    for folder in (own, other, empty):
        folder.mkdir()
    for folder in (own, other):
        (folder / LAST).write_bytes(b"x")
    return {"own": own, "other": other, "empty": empty}


# (value, run folder, folder given on the command line) -> (checkpoint, folder the run writes to, note | error)
RESUME_CASES = [
    ("", "own", True, None, "own", None),
    ("auto", "own", False, "own/" + LAST, "own", "--resume auto: continuing from {own}/" + LAST),
    ("auto", "empty", True, None, "empty", f"--resume auto: no {LAST} in {{empty}} yet, starting a fresh run"),
    ("{other}", "own", False, "other/" + LAST, "other", "--resume {other}/" + LAST + ": the run continues in its "
     "own folder {other} (not the configured {own})"),
    ("{own}/" + LAST, "own", True, "own/" + LAST, "own", None),
    ("{empty}", "empty", True, FileNotFoundError, None, f"--resume {{empty}}: the folder holds no {LAST} to "
     "continue from"),
    ("{other}/" + LAST, "own", True, RunError, None, "--resume {other}/" + LAST + " continues the run in its own "
     "folder {other}, but --output_dir is {own}: drop --output_dir (or give {other}); to start a new run in {own} "
     "from these weights, use --checkpoint instead"),
    ("{empty}/missing.pth", "own", True, "empty/missing.pth", "own", None),  # the input check names it
]


@pytest.mark.parametrize("value,folder,given,checkpoint,writes_to,text", RESUME_CASES)
def test_resume_resolution(tmp_path, value, folder, given, checkpoint, writes_to, text):
    folders = _case_folders(tmp_path)
    value, text = value.format(**folders), text.format(**folders) if text else text
    if isinstance(checkpoint, type):
        with pytest.raises(checkpoint) as info:
            resolve_resume(value, folders[folder], LAST, folder_given=given)
        assert str(info.value) == text
        return
    resume = resolve_resume(value, folders[folder], LAST, folder_given=given)
    assert resume.checkpoint == (str(tmp_path / checkpoint) if checkpoint else None)
    assert resume.folder == folders[writes_to] and resume.notes == ([text] if text else [])


def test_a_finished_run_resumed_in_its_own_folder_reports_on_its_best(synthetic_root, finished, tmp_path):
    new = tmp_path / "new"
    with pytest.raises(RunError, match="continues the run in its own folder"):
        cmr(synthetic_root, new, "--resume", str(finished / LAST))
    assert not new.exists()
    out = copy_run(finished, tmp_path / "run")
    # Without --output_dir the run follows its checkpoint, whatever folder the config names.
    assert cmr(synthetic_root, None, "--resume", str(out / LAST), sets=(f"output_dir={new}",)) == 0
    assert not new.exists()
    best = torch.load(out / "checkpoint_best.pth", map_location="cpu", weights_only=False)["best"]
    report, original = load_report(out / "results_test.json"), load_report(finished / "results_test.json")
    assert report["checkpoint"] == str(out / "checkpoint_best.pth") and report["best_epoch"] == best["epoch"] == 0
    assert report["metrics"] == original["metrics"]
    final = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert final["kind"] == "final" and final["checkpoint"] == str(out / "checkpoint_best.pth")


def test_refusal_is_one_line_and_exit_status_2(synthetic_root, finished):
    env = {k: v for k, v in os.environ.items() if k not in ("FASHIONFINE_TRACEBACK", "RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "retrieval.py", *argv(synthetic_root, finished)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"error: {finished} holds another run (checkpoint_best.pth, checkpoint_last.pth, log.jsonl): continue it "
        f"with --resume {finished / LAST}, choose another --output_dir, or pass --overwrite to replace it"]
    assert RunFiles(LAST, "checkpoint_best.pth").previous_run(finished)  # still there, untouched

"""retrieval.py end to end on the synthetic FashionGen set (tiny sizes, CPU, in-process): which split model
selection reads, clear errors for broken inputs, exact --resume, and `eval_cmr.sh`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pytest
import torch

import retrieval
from datasets.fashiongen import FashionGenCMRTrainDataset, FashionGenSplit
from engine.config import ConfigError
from engine.errors import DataError
from evaluation.report import load_report
from tasks.cmr_eval import TEST_SELECTION_WARNING, CMREvaluator

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/retrieval_tiny.yaml"
# Tiny and fast: 32 px images, short texts, one epoch, no loader workers (so the tracing below sees every read),
# one intra-op thread (2 threads on 2 shared cores spin against the other jobs).
FAST = ["model.vision.image_res=32", "data.max_words=32", "runtime.num_workers=0", "runtime.cpu_threads=1",
        "train.epochs=1", "data.heldout_products=20", "eval.sampled.set_len=20", "train.progress_bar=false",
        "train.log_every=1000"]
FULL_KEYS = {f"{d}_r{k}" for d in ("txt", "img") for k in (1, 5, 10)} | {"txt_r_mean", "img_r_mean", "r_mean",
                                                                         "full_sum"}
TINY_KEYS = {f"tiny_{d}_r{k}" for d in ("txt", "img") for k in (1, 5, 10)} | {"tiny_sum"}


def overrides(data_root: Path, tokenizer: Path, *extra: str) -> list[str]:
    return ["--set", f"data.root={data_root}", f"data.tokenizer={tokenizer}", *FAST, *extra]


def run(root: Path, out: Path, *flags: str, data_root: Path | None = None, tokenizer: Path | None = None,
        sets: tuple[str, ...] = ()) -> int:
    """retrieval.main on the session's synthetic data (or another data root / tokenizer folder)."""
    return retrieval.main(["--config", CONFIG, "--output_dir", str(out), *flags,
                           *overrides(data_root or root / "fashiongen", tokenizer or root / "tokenizer", *sets)])


pytestmark = pytest.mark.usefixtures("restore_torch_globals")  # tests/conftest.py


def mirror(src: Path, dst: Path) -> Path:
    """`dst` with the tree of `src`, every file a symbolic link: break one file by replacing its link only."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return dst


def replace(path: Path, data: bytes | str) -> Path:
    """Replace a mirrored file by a real one (never writes through the link into the session data)."""
    path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ----------------------------------------------------------------------------- what a run reads, and when


@dataclass
class Trace:
    """Reads of FashionGen rows during a run, tagged with the phase: `training` (including the per-epoch
    selection evaluations) or `final` (the test evaluation after training, `CMREvaluator.report`)."""

    phase: str = "training"
    images: list[tuple[str, int, str]] = field(default_factory=list)  # (split, row, phase)
    texts: list[tuple[str, int, str]] = field(default_factory=list)  # (split, row, phase)
    train_products: list[int] = field(default_factory=list)  # products the training dataset served
    evaluations: list[tuple[str, str]] = field(default_factory=list)  # (evaluator name, phase)

    def rows(self, what: str, split: str, phase: str) -> list[int]:
        return [row for s, row, p in getattr(self, what) if s == split and p == phase]


@contextlib.contextmanager
def traced() -> Iterator[Trace]:
    trace = Trace()
    read_image, read_fields = FashionGenSplit.read_image, FashionGenSplit.read_fields
    get_item, evaluate, report_test = FashionGenCMRTrainDataset.__getitem__, CMREvaluator.run, CMREvaluator.report

    def traced_read_image(self, row):
        trace.images.append((self.split, int(row), trace.phase))
        return read_image(self, row)

    def traced_read_fields(self, row, keys):
        trace.texts.append((self.split, int(row), trace.phase))
        return read_fields(self, row, keys)

    def traced_get_item(self, i):
        trace.train_products.append(int(self.products[i]))
        return get_item(self, i)

    def traced_run(self, model):
        trace.evaluations.append((self.name, trace.phase))
        return evaluate(self, model)

    def traced_report(self, *args, **kwargs):
        trace.phase = "final"
        return report_test(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FashionGenSplit, "read_image", traced_read_image)
        mp.setattr(FashionGenSplit, "read_fields", traced_read_fields)
        mp.setattr(FashionGenCMRTrainDataset, "__getitem__", traced_get_item)
        mp.setattr(CMREvaluator, "run", traced_run)
        mp.setattr(CMREvaluator, "report", traced_report)
        yield trace


@pytest.fixture(scope="module")
def heldout_run(synthetic_root, tmp_path_factory) -> tuple[Path, Trace]:
    """One epoch of CMR fine-tuning (from random weights) with the default `select_on: heldout`, traced."""
    out = tmp_path_factory.mktemp("cmr_heldout")
    with traced() as trace:
        assert run(synthetic_root, out) == 0
    return out, trace


@pytest.fixture(scope="module")
def splits(synthetic_root) -> dict[str, FashionGenSplit]:
    return {name: FashionGenSplit(synthetic_root / "fashiongen", name) for name in ("train", "validation")}


def test_heldout_selection_never_reads_the_test_split_during_training(heldout_run, splits):
    out, trace = heldout_run
    train, test = splits["train"], splits["validation"]
    assert trace.evaluations == [("heldout", "training"), ("test", "final")]
    # Nothing of the test split (images or texts) before the final evaluation ...
    assert trace.rows("images", "validation", "training") == []
    assert trace.rows("texts", "validation", "training") == []
    # ... which reads every test image exactly once and one text per product (its first row), and no train row.
    assert sorted(trace.rows("images", "validation", "final")) == list(range(test.num_rows))
    assert sorted(trace.rows("texts", "validation", "final")) == test.product_starts[:-1].tolist()
    assert trace.rows("images", "train", "final") == [] and trace.rows("texts", "train", "final") == []

    record = json.loads((out / "eval_sets" / "fashiongen_heldout_products.json").read_text(encoding="utf-8"))
    heldout = set(record["heldout"])
    assert len(heldout) == 20 and record["total"] == train.num_products
    assert record["heldout_labels"] == train.product_ids[record["heldout"]].tolist()
    heldout_rows = {r for p in heldout for r in train.product_rows(p)}
    # Training never serves a held-out product; the selection evaluation reads every held-out image.
    assert trace.train_products and not heldout & set(trace.train_products)
    assert len(trace.train_products) == (train.num_products - 20) // 16 * 16  # one epoch, full batches of 16
    assert heldout_rows <= set(trace.rows("images", "train", "training"))

    report = load_report(out / "results_test.json", task="fashiongen_cmr")
    assert report["selected_on"] == "heldout" and "selection_warning" not in report
    assert report["options"]["num_rows"] == test.num_rows and report["options"]["num_products"] == test.num_products
    assert TEST_SELECTION_WARNING not in (out / "log.txt").read_text(encoding="utf-8")


def test_select_on_test_reads_the_test_split_and_warns(synthetic_root, splits, tmp_path):
    with traced() as trace:
        assert run(synthetic_root, tmp_path, sets=("data.select_on=test",)) == 0
    assert trace.evaluations == [("test", "training"), ("test", "final")]
    assert sorted(trace.rows("images", "validation", "training")) == list(range(splits["validation"].num_rows))
    assert not (tmp_path / "eval_sets" / "fashiongen_heldout_products.json").exists()
    assert len(set(trace.train_products)) > splits["train"].num_products - 20  # nothing held out
    log = (tmp_path / "log.txt").read_text(encoding="utf-8")
    assert "model selection on the test split" in log
    assert log.count(TEST_SELECTION_WARNING) >= 2  # at start-up and at every selection evaluation
    report = load_report(tmp_path / "results_test.json", task="fashiongen_cmr")
    assert report["selected_on"] == "test" and report["selection_warning"] == TEST_SELECTION_WARNING


# ----------------------------------------------------------------------------- broken or missing inputs


@pytest.fixture
def broken_root(synthetic_root, tmp_path) -> Path:
    """A mirror of the synthetic FashionGen folder whose files can be broken one at a time."""
    return mirror(synthetic_root / "fashiongen", tmp_path / "fashiongen")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_missing_product_list_names_it_and_the_prepare_command(synthetic_root, broken_root, tmp_path, split):
    path = broken_root / split / "productid_list.json"
    path.unlink()
    with pytest.raises(FileNotFoundError) as info:
        run(synthetic_root, tmp_path / "out", data_root=broken_root)
    assert str(path) in str(info.value) and "python prepare_dataset.py" in str(info.value)


def test_malformed_or_stale_product_list_names_it(synthetic_root, broken_root, tmp_path):
    path = broken_root / "validation" / "productid_list.json"
    groups = json.loads(path.read_text(encoding="utf-8"))
    replace(path, "[[1, [0, 1]], ")
    with pytest.raises(DataError, match="not valid JSON") as info:
        run(synthetic_root, tmp_path / "a", data_root=broken_root)
    assert str(path) in str(info.value)
    replace(path, json.dumps(groups[:-1]))  # one product short: no longer matches the .h5 file
    with pytest.raises(DataError, match="prepare_dataset.py") as info:
        run(synthetic_root, tmp_path / "b", data_root=broken_root)
    assert str(path) in str(info.value) and "fashiongen_256_256_validation.h5" in str(info.value)


def test_truncated_or_missing_h5_names_it(synthetic_root, broken_root, tmp_path):
    path = broken_root / "fashiongen_256_256_validation.h5"
    data = path.read_bytes()
    replace(path, data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupted") as info:
        run(synthetic_root, tmp_path / "a", data_root=broken_root)
    assert str(path) in str(info.value)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="FashionGen file not found") as info:
        run(synthetic_root, tmp_path / "b", data_root=broken_root)
    assert str(path) in str(info.value)


def test_missing_vocabulary_names_it_and_the_build_command(synthetic_root, tmp_path):
    (tmp_path / "tok").mkdir()
    with pytest.raises(FileNotFoundError, match="build_vocab.py") as info:
        run(synthetic_root, tmp_path / "out", tokenizer=tmp_path / "tok")
    assert str(tmp_path / "tok" / "vocab.txt") in str(info.value)


def test_entry_point_prints_one_line_and_exits_2(synthetic_root, broken_root, tmp_path):
    path = broken_root / "train" / "productid_list.json"
    path.unlink()
    env = {k: v for k, v in os.environ.items() if k != "FASHIONFINE_TRACEBACK"}
    proc = subprocess.run([sys.executable, "retrieval.py", "--config", CONFIG, "--output_dir", str(tmp_path / "o"),
                           *overrides(broken_root, synthetic_root / "tokenizer")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], proc.stderr


def write_empty_h5(src: Path, dst: Path) -> None:
    """A FashionGen file with every key and dtype of `src` but no rows."""
    dst.unlink()
    with h5py.File(src, "r") as full, h5py.File(dst, "w") as empty:
        for key, dataset in full.items():
            empty.create_dataset(key, shape=(0, *dataset.shape[1:]), dtype=dataset.dtype)


def test_empty_split_or_heldout_is_an_error_not_a_recall_of_zero(synthetic_root, splits, broken_root, tmp_path):
    total = splits["train"].num_products
    for n in (0, total):  # nothing held out / every training product held out
        with pytest.raises(DataError, match=f"cannot hold out {n} of {total}"):
            run(synthetic_root, tmp_path / f"h{n}", sets=(f"data.heldout_products={n}",))
    name = "fashiongen_256_256_validation.h5"
    write_empty_h5(synthetic_root / "fashiongen" / name, broken_root / name)
    replace(broken_root / "validation" / "productid_list.json", "[]")
    unused = tmp_path / "unused.pth"  # exists (checked before the run starts), never read: the data fails first
    unused.write_bytes(b"")
    for flags in ((), ("--evaluate", "--checkpoint", str(unused))):
        with pytest.raises(DataError, match="no rows") as info:
            run(synthetic_root, tmp_path / "empty", *flags, data_root=broken_root)
        assert name in str(info.value)
    assert not (tmp_path / "empty" / "results_test.json").exists()


def test_too_few_products_for_the_sampled_protocol_fails_before_training(synthetic_root, tmp_path):
    # 10 held-out products cannot give 10 negatives + the positive per query: a config error at start-up,
    # not a crash at the first selection evaluation after an epoch of training.
    with pytest.raises(ConfigError, match="eval.sampled.neg_len 10 needs at least 12 products in the heldout set, "
                                          "which has 10.*data.heldout_products"):
        run(synthetic_root, tmp_path, sets=("data.heldout_products=10",))
    assert not (tmp_path / "checkpoint_last.pth").exists() and not (tmp_path / "log.jsonl").exists()
    assert run(synthetic_root, tmp_path / "full", sets=("data.heldout_products=10", "eval.protocol=full",
                                                        "train.stop_after_steps=1")) == 0


# ----------------------------------------------------------------------------- resume


def test_resume_continues_bit_for_bit(synthetic_root, tmp_path):
    # Bit-exact on CPU needs 1 intra-op thread (FAST) or runtime.deterministic: with 2 threads and without it,
    # two uninterrupted runs already differ after 5 steps (measured).
    two_epochs = ("train.epochs=2", "runtime.deterministic=true")
    assert run(synthetic_root, tmp_path / "straight", sets=two_epochs) == 0
    # 13 steps per epoch (220 training products, batches of 16): stop inside epoch 1, after one selection.
    assert run(synthetic_root, tmp_path / "resumed", sets=(*two_epochs, "train.stop_after_steps=18")) == 0
    stopped = torch.load(tmp_path / "resumed" / "checkpoint_last.pth", map_location="cpu", weights_only=False)
    assert (stopped["epoch"], stopped["iter_in_epoch"], stopped["global_step"]) == (1, 5, 18)
    assert not (tmp_path / "resumed" / "results_test.json").exists()  # an interrupted run reports nothing
    assert run(synthetic_root, tmp_path / "resumed", "--resume", str(tmp_path / "resumed" / "checkpoint_last.pth"),
               sets=two_epochs) == 0

    a, b = (torch.load(tmp_path / d / "checkpoint_last.pth", map_location="cpu", weights_only=False)
            for d in ("straight", "resumed"))
    assert a["global_step"] == b["global_step"] == 26 and a["best"] == b["best"]
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert different == []
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    metrics = [load_report(tmp_path / d / "results_test.json")["metrics"] for d in ("straight", "resumed")]
    assert metrics[0] == metrics[1]


# ----------------------------------------------------------------------------- eval_cmr.sh


def test_eval_cmr_sh_prints_the_table_and_writes_both_protocols(synthetic_root, heldout_run, splits, tmp_path):
    trained, _ = heldout_run
    checkpoint = trained / "checkpoint_best.pth"
    env = {**os.environ, "CONFIG": CONFIG, "DATA_ROOT": str(synthetic_root / "fashiongen"),
           "TOKENIZER": str(synthetic_root / "tokenizer"), "OUTPUT_DIR": str(tmp_path / "eval"),
           "PYTHON": sys.executable}
    env.pop("CHECKPOINT", None)
    proc = subprocess.run(["bash", "eval_cmr.sh", str(checkpoint), "--set", *FAST], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    header = next(line for line in proc.stdout.splitlines() if "full R@1" in line)
    assert header.split() == ["full", "R@1", "full", "R@5", "full", "R@10", "sampled", "R@1", "sampled", "R@5",
                              "sampled", "R@10"]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line[:3] in ("I2T", "T2I")}
    assert set(rows) == {"I2T", "T2I"} and all(len(v) == 6 for v in rows.values())

    report = load_report(tmp_path / "eval" / "results_test.json", task="fashiongen_cmr")
    assert set(report["metrics"]) == FULL_KEYS | TINY_KEYS
    assert [float(v) for v in rows["I2T"]] == pytest.approx(
        [report["metrics"][k] for k in ("txt_r1", "txt_r5", "txt_r10", "tiny_txt_r1", "tiny_txt_r5",
                                        "tiny_txt_r10")], abs=0.005)
    options = report["options"]
    assert report["checkpoint"] == str(checkpoint)
    test = splits["validation"]
    assert options["protocol"] == "both" and (options["num_rows"], options["num_products"]) == (test.num_rows,
                                                                                                test.num_products)
    assert {k: options["sampled"][k] for k in ("sets", "seed", "set_len", "neg_len", "exclude_positive_from_t2i_pool")
            } == {"sets": "fixed", "seed": 66, "set_len": 20, "neg_len": 10, "exclude_positive_from_t2i_pool": True}
    assert options["sampled"]["queries"] == [20, 20]
    # The same checkpoint and protocols as the training run's final evaluation: the same numbers.
    assert report["metrics"] == load_report(trained / "results_test.json")["metrics"]


def test_evaluate_one_protocol_and_needs_a_checkpoint(synthetic_root, heldout_run, tmp_path):
    trained, _ = heldout_run
    assert run(synthetic_root, tmp_path / "full", "--evaluate", "--checkpoint", str(trained / "checkpoint_best.pth"),
               sets=("eval.protocol=full",)) == 0
    report = load_report(tmp_path / "full" / "results_test.json")
    assert set(report["metrics"]) == FULL_KEYS and report["options"]["protocol"] == "full"
    assert "sampled" not in report["options"]
    expected = load_report(trained / "results_test.json")["metrics"]
    assert report["metrics"] == {k: expected[k] for k in FULL_KEYS}
    with pytest.raises(FileNotFoundError, match="evaluation needs the weights to evaluate: pass --checkpoint"):
        run(synthetic_root, tmp_path / "none", "--evaluate")


def test_evaluate_does_not_need_the_training_file(synthetic_root, heldout_run, broken_root, tmp_path):
    trained, _ = heldout_run
    (broken_root / "fashiongen_256_256_train.h5").unlink()
    (broken_root / "train" / "productid_list.json").unlink()
    assert run(synthetic_root, tmp_path, "--evaluate", "--checkpoint", str(trained / "checkpoint_best.pth"),
               data_root=broken_root) == 0
    assert load_report(tmp_path / "results_test.json")["metrics"] == load_report(trained / "results_test.json")[
        "metrics"]

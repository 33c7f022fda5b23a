"""Config and data mistakes caught before work starts (in-process, on copies of the session's synthetic data).

Each case is a command-line or data mutation, the entry point it is given to and the fragment its one-line
error must contain; the error is of a type `engine.run.run_main` turns into exit status 2 (one subprocess case
checks that path itself). The selection-metric names the pre-run check accepts are compared with the keys a
real evaluation on the synthetic data returns.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
import torch
from torch import nn

import asen_main
import prepare_dataset
import retrieval
import tgir
import train_blip
from datasets.asen import AsenSchema
from datasets.fashiongen import FashionGenSplit
from datasets.fashioniq import FashionIQLayout, read_caption_file
from datasets.text import load_tokenizer
from engine.config import ConfigError, load_config
from engine.errors import DataError, RunError
from evaluation.cmr import CMROptions, evaluate_cmr, metric_names
from evaluation.tgir import TGIROptions
from tasks.asen_eval import metric_names as asen_metric_names
from tasks.cmr_eval import test_evaluator as cmr_test_evaluator
from tasks.fashiongen import RetrievalTask
from tasks.fine_schema import RetrievalConfig, TGIRConfig
from tasks.tgir import TGIREvaluator, TGIRTask, heldout_set, val_sets
from tests.asen_helpers import synthetic_asen, tiny_args
from tests.test_cmr_task import mirror

ROOT = Path(__file__).resolve().parents[1]
EXIT_2 = (ConfigError, DataError, RunError, FileNotFoundError)  # what run_main reports as one line, status 2
FINE_FAST = ["model.vision.image_res=32", "data.max_words=24", "runtime.num_workers=0", "runtime.cpu_threads=1",
             "train.epochs=1", "train.progress_bar=false"]


@dataclass(frozen=True)
class Paths:
    """Where a case's inputs are: the session data (read only) and the case's own folder."""

    session: Path  # synthetic_root: fashiongen/, fashioniq/, tokenizer/
    tmp: Path
    asen: Path = Path()  # the synthetic ASEN++ data set (tests/asen_helpers.py)

    def fashiongen(self, root: Path | None = None) -> list[str]:
        return [f"data.root={root or self.session / 'fashiongen'}", f"data.tokenizer={self.session / 'tokenizer'}"]


def fine(entry: Callable, config: str, *sets: str,
         data: Callable[[Paths], list[str]] | None = None) -> Callable[[Paths], tuple[Callable, list[str]]]:
    """A Fashion-FINE command line: `--config CONFIG --output_dir TMP/out --set DATA FAST SETS` (DATA: the
    session's FashionGen files unless `data` gives the keys of mutated copies)."""
    def build(p: Paths) -> tuple[Callable, list[str]]:
        keys = data(p) if data is not None else p.fashiongen()
        return entry, ["--config", config, "--output_dir", str(p.tmp / "out"), "--set", *keys, *FINE_FAST, *sets]
    return build


def fashioniq(p: Paths, root: Path | None = None) -> list[str]:
    return [f"data.root={root or p.session / 'fashioniq'}", f"data.tokenizer={p.session / 'tokenizer'}"]


# ----------------------------------------------------------------------------- data mutations (on copies)


def bad_yaml(p: Paths) -> list[str]:
    path = p.tmp / "bad.yaml"
    path.write_text("_base_: " + str(ROOT / "configs/retrieval_tiny.yaml") + "\ntrain:\n  epochs: [1,\n")
    return ["--config", str(path)]


def non_utf8_vocab(p: Paths) -> list[str]:
    folder = p.tmp / "tokenizer"
    shutil.copytree(p.session / "tokenizer", folder)
    data = (folder / "vocab.txt").read_bytes()
    (folder / "vocab.txt").write_bytes(data[:200] + b"\xff\xfe" + data[200:])
    return [f"data.root={p.session / 'fashiongen'}", f"data.tokenizer={folder}"]


def descriptions(p: Paths, empty_rows: slice) -> Path:
    """A FashionGen root whose train file has empty `input_description` in `empty_rows`."""
    root = mirror(p.session / "fashiongen", p.tmp / "fashiongen")
    h5 = root / "fashiongen_256_256_train.h5"
    h5.unlink()
    shutil.copy(p.session / "fashiongen" / h5.name, h5)
    with h5py.File(h5, "r+") as f:
        values = f["input_description"][...]
        values[empty_rows] = b""
        f["input_description"][...] = values
    return root


def empty_descriptions(p: Paths) -> list[str]:
    return p.fashiongen(descriptions(p, slice(None)))


def fashioniq_copy(p: Paths) -> Path:
    root = p.tmp / "fashioniq"
    (root / "captions").mkdir(parents=True)
    for name in ("images", "image_splits"):
        (root / name).symlink_to(p.session / "fashioniq" / name)
    for path in (p.session / "fashioniq" / "captions").iterdir():
        shutil.copy2(path, root / "captions" / path.name)
    return root


def prepare_failed(p: Paths) -> list[str]:
    """A per-category file edited into invalid JSON: prepare fails and leaves the earlier merged file."""
    root = fashioniq_copy(p)
    (root / "captions" / "cap.dress.train.json").write_text('[{"candidate": "x"')
    with contextlib.redirect_stderr(io.StringIO()):
        assert prepare_dataset.main(["--fashioniq-root", str(root), "--quiet"]) == 2
    return fashioniq(p, root)


def source_edited(p: Paths) -> list[str]:
    """A per-category file that changed after the merge (prepare not re-run)."""
    root = fashioniq_copy(p)
    path = root / "captions" / "cap.shirt.train.json"
    path.write_text(path.read_text().replace('"captions"', '"captions" ', 1))
    return fashioniq(p, root)


def empty_category(p: Paths) -> list[str]:
    root = fashioniq_copy(p)
    (root / "captions" / "cap.shirt.train.json").write_text("[]\n")
    return ["--fashioniq-root", str(root), "--quiet"]


def asen_broken_images(p: Paths) -> list[str]:
    """Two training images emptied (zero bytes) in a copy of the synthetic ASEN++ data."""
    data = p.tmp / "asen"
    shutil.copytree(p.asen, data)
    names = (data / "filenames_train.txt").read_text().split()
    for name in names[:2]:
        (data / name).write_bytes(b"")
    return tiny_args(data, 1, p.tmp / "runs", "DATA.CHECK_IMAGES=all", "SOLVER.EPOCHS=1")


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    name: str
    command: Callable[[Paths], tuple[Callable, list[str]]]
    error: type[Exception] | None  # None: the entry point returns its status itself (prepare_dataset.py)
    fragment: str


def with_args(entry: Callable, args: Callable[[Paths], list[str]]) -> Callable[[Paths], tuple[Callable, list[str]]]:
    return lambda p: (entry, args(p))


CASES = [
    Case("yaml_syntax", with_args(retrieval.main, bad_yaml), ConfigError, "bad.yaml:4:1: invalid YAML: expected"),
    Case("set_yaml", fine(retrieval.main, "configs/retrieval_tiny.yaml", "optim.betas=[0.9,"), ConfigError,
         "--set 'optim.betas=[0.9,': the value is not valid YAML at column 6"),
    Case("cuda_fine", fine(retrieval.main, "configs/retrieval_tiny.yaml", "runtime.device=cuda"), ConfigError,
         "runtime.device is 'cuda' but CUDA is not available"),
    Case("select_cmr", fine(retrieval.main, "configs/retrieval_tiny.yaml", "train.select_metric=nope"),
         ConfigError, "train.select_metric 'nope' is not a metric of the FashionGen CMR evaluation (eval.protocol "
                      "both); valid names: txt_r1,"),
    Case("select_cmr_protocol", fine(retrieval.main, "configs/retrieval_tiny.yaml", "eval.protocol=sampled",
                                     "train.select_metric=full_sum"), ConfigError,
         "'full_sum' is not a metric of the FashionGen CMR evaluation (eval.protocol sampled); valid names: "
         "tiny_txt_r1"),
    Case("select_tgir", fine(tgir.main, "configs/tgir_tiny.yaml", "train.select_metric=dress_r10", data=fashioniq),
         ConfigError, "'dress_r10' is not a metric of the FashionIQ evaluation (data.select_on heldout); valid "
                      "names: heldout_r1,"),
    Case("select_blip", fine(train_blip.main, "configs/blip/retrieval_fashionfine_2_tiny.yaml",
                             "data.select_on=heldout", "train.select_metric=full_sum"), ConfigError,
         "'full_sum' is not a metric of the BLIP-variant CMR evaluation"),
    Case("non_utf8_vocab", fine(retrieval.main, "configs/retrieval_tiny.yaml", data=non_utf8_vocab), DataError,
         "tokenizer/vocab.txt: not UTF-8 text at byte offset 200"),
    Case("batch_cmr", fine(retrieval.main, "configs/retrieval_tiny.yaml", "data.batch_size=256",
                           "model.queue_size=256", "data.heldout_products=40"), ConfigError,
         "data.batch_size 256 is larger than the 200 training products of"),
    Case("batch_tgir", fine(tgir.main, "configs/tgir_tiny.yaml", "data.batch_size=512", "model.queue_size=1024",
                            data=fashioniq), ConfigError,
         "data.batch_size 512 is larger than the 327 training triplets of"),
    Case("empty_descriptions", fine(retrieval.main, "configs/retrieval_tiny.yaml", data=empty_descriptions),
         DataError, "fashiongen_256_256_train.h5 (train split): every one of the 714 rows has an empty "
                    "input_description"),
    Case("merged_after_failed_prepare", fine(tgir.main, "configs/tgir_tiny.yaml", data=prepare_failed), DataError,
         "cap.train.json is stale: "),
    Case("merged_source_edited", fine(tgir.main, "configs/tgir_tiny.yaml", data=source_edited), DataError,
         "captions/cap.shirt.train.json changed since prepare_dataset.py merged it"),
    Case("prepare_empty_category", with_args(prepare_dataset.main, empty_category), None,
         "captions/cap.shirt.train.json: no triplets"),
    Case("cuda_asen", lambda p: (asen_main.main, tiny_args(p.asen, 1, p.tmp / "runs", "DEVICE=cuda")), ConfigError,
         "DEVICE is 'cuda' but CUDA is not available"),
    Case("asen_zero_byte_images", with_args(asen_main.main, asen_broken_images), DataError,
         "filenames_train.txt:1: cannot read image "),
]


def outcome(entry: Callable, argv: list[str]) -> tuple[int, str, type[Exception] | None]:
    """(exit status, error line, error type) as `engine.run.run_main` gives them; prepare_dataset.py returns its
    status and prints its own line."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = entry(argv)
    except EXIT_2 as exc:
        return 2, f"error: {exc}", type(exc)
    return code, stderr.getvalue().strip(), None


@pytest.fixture(scope="module")
def asen_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_asen(tmp_path_factory)


@pytest.fixture(autouse=True)
def restore_torch_globals() -> Iterator[None]:
    """The in-process runs set torch's thread count and deterministic mode; give the next test the originals."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_mistake_is_one_line_and_status_2(case: Case, synthetic_root: Path, asen_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CUDA cases on any machine
    entry, argv = case.command(Paths(synthetic_root, tmp_path, asen_data))
    code, line, error = outcome(entry, argv)
    assert (code, error) == (2, case.error), line
    assert case.fragment in line, line
    assert "\n" not in line, line
    assert not list(tmp_path.rglob("checkpoint*")), "trained before refusing"


def test_entry_point_exit_status_and_single_line(tmp_path: Path) -> None:
    """The process path: `run_main` prints the one line on stderr and exits with status 2."""
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: 1\n")
    proc = subprocess.run([sys.executable, "retrieval.py", "--config", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {path}:2:1: invalid YAML: ")


def test_some_empty_descriptions_warn_with_the_count(synthetic_root: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = descriptions(Paths(synthetic_root, tmp_path), slice(3, 8))
    logger = logging.getLogger("fashionfine")
    logger.addHandler(caplog.handler)
    try:
        split = FashionGenSplit(root, "train")
    finally:
        logger.removeHandler(caplog.handler)
    assert split.num_rows == 714
    assert "(train split): 5 of 714 rows have an empty input_description" in caplog.text


# ----------------------------------------------------------------------------- metric names = evaluation keys


class RandomEncoders(nn.Module):
    """Stands in for a model: random embeddings of the right count (the evaluators only rank them)."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return torch.randn(image.shape[0], 8)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, *args: object) -> torch.Tensor:
        return torch.randn(ids.shape[0], 8)

    def encode_query(self, ids: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return torch.randn(ids.shape[0], 8)


def test_cmr_select_metric_names_are_the_evaluation_keys(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = load_config(RetrievalConfig, [ROOT / "configs/retrieval_tiny.yaml"],
                      [*Paths(synthetic_root, tmp_path).fashiongen(), *FINE_FAST, "eval.sampled.set_len=20"])
    evaluator = cmr_test_evaluator(cfg.data, cfg.eval, load_tokenizer(cfg.data.tokenizer), 32,
                                   FashionGenSplit(cfg.data.root, "validation"), tmp_path, 0, torch.device("cpu"),
                                   "fp32", False)
    assert list(evaluator(RandomEncoders())) == list(RetrievalTask.selection_metrics(cfg))
    # the BLIP variant of the full protocol (FineBlipTask.selection_metrics), on the same rows
    rows, num_images = evaluator.eval_set.product_rows, evaluator.eval_set.num_images
    blip = evaluate_cmr(rows, text_emb=torch.randn(len(rows), 8), image_emb=torch.randn(num_images, 8),
                        options=CMROptions(protocol="full", blip=True))
    assert list(blip.metrics) == list(metric_names("full", blip=True))


@pytest.mark.parametrize("select_on", ["heldout", "val"])
def test_tgir_select_metric_names_are_the_evaluation_keys(select_on: str, synthetic_root: Path,
                                                         tmp_path: Path) -> None:
    cfg = load_config(TGIRConfig, [ROOT / "configs/tgir_tiny.yaml"],
                      [*fashioniq(Paths(synthetic_root, tmp_path)), *FINE_FAST, f"data.select_on={select_on}"])
    layout = FashionIQLayout.open(cfg.data.root)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if select_on == "val":
        sets = val_sets(cfg, layout, tokenizer, True, 32)
    else:
        triplets = read_caption_file(layout, "all", "train")
        sets = heldout_set(cfg, triplets, list(range(0, len(triplets), 10)), layout, tokenizer, True, 32)
    evaluator = TGIREvaluator(sets, layout, TGIROptions("triplets", cfg.eval.exclude_reference), image_res=32,
                              batch_size=128, num_workers=0, device=torch.device("cpu"), precision="fp32",
                              chunk_size=None, name=select_on, output_dir=tmp_path, progress_bar=False)
    assert list(evaluator.run(RandomEncoders()).metrics) == list(TGIRTask.selection_metrics(cfg))


def test_asen_metric_names() -> None:
    assert asen_metric_names(AsenSchema(("sleeve length", "colour"), (2, 3))) == (
        "map", "map_attr_mean", "map/sleeve_length", "map/colour")

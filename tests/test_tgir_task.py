"""tgir.py end to end on the synthetic FashionIQ folder (tiny sizes, CPU, in-process): gallery modes and
reference exclusion through `--evaluate`, which triplets model selection reads, exact --resume, clear errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import datasets.fashioniq as fiq
import evaluation.tgir
import tgir
from datasets.text import load_tokenizer
from engine.config import ConfigError, load_config
from engine.errors import DataError
from engine.seeding import seed_everything
from evaluation.report import load_report
from models.fine_tgir import FineTGIRModel
from tasks.fine_schema import TGIRConfig
from tasks.tgir import VAL_SELECTION_WARNING, TGIREvaluator

CONFIG = "configs/tgir_tiny.yaml"
CATEGORIES = ("dress", "shirt", "toptee")
# Tiny and fast: 32 px, short texts, one epoch, no loader workers (the tracing below sees every read), 1 thread.
FAST = ["model.vision.image_res=32", "data.max_words=24", "runtime.num_workers=0", "runtime.cpu_threads=1",
        "train.epochs=1", "train.progress_bar=false", "train.log_every=1000"]


def sets(root: Path, *extra: str, data_root: Path | None = None) -> list[str]:
    return [f"data.root={data_root or root / 'fashioniq'}", f"data.tokenizer={root / 'tokenizer'}", *FAST, *extra]


def run(root: Path, out: Path, *flags: str, data_root: Path | None = None, extra: tuple[str, ...] = ()) -> int:
    return tgir.main(["--config", CONFIG, "--output_dir", str(out), *flags, "--set",
                      *sets(root, *extra, data_root=data_root)])


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def images_of(triplets: list[dict]) -> set[str]:
    return {name for t in triplets for name in (t["candidate"], t["target"])}


pytestmark = pytest.mark.usefixtures("restore_torch_globals")  # tests/conftest.py


@pytest.fixture(scope="module")
def fresh_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A freshly initialised TGIR model of the FAST config as {'model': state dict} (a valid --evaluate input)."""
    cfg = load_config(TGIRConfig, [CONFIG], sets(synthetic_root))
    seed_everything(cfg.runtime.seed, 0)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    model = FineTGIRModel(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=len(tokenizer),
                          sep_token_id=tokenizer.sep_token_id)
    path = tmp_path_factory.mktemp("tgir_fresh") / "fresh.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def evaluations(synthetic_root, fresh_checkpoint, tmp_path_factory) -> dict[str, dict]:
    """results_val.json of `tgir.py --evaluate` with the fresh model for three gallery / exclusion settings,
    each with the candidates the ranking excluded (`excluded`: one list per query, or None) per category."""
    out = tmp_path_factory.mktemp("tgir_eval")
    settings = {"triplets": ("eval.gallery=triplets",), "split": ("eval.gallery=split",),
                "triplets_excluded": ("eval.gallery=triplets", "eval.exclude_reference=true")}
    reports, calls = {}, []
    rank = evaluation.tgir.best_positive_ranks

    def recording_rank(positives, *args, exclude=None, **kwargs):
        calls.append(None if exclude is None else exclude.to_lists())
        return rank(positives, *args, exclude=exclude, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluation.tgir, "best_positive_ranks", recording_rank)
        for name, extra in settings.items():
            calls.clear()
            assert run(synthetic_root, out / name, "--evaluate", "--checkpoint", str(fresh_checkpoint),
                       extra=extra) == 0
            reports[name] = load_report(out / name / "results_val.json", task="fashioniq_tgir")
            reports[name]["excluded"] = dict(zip(CATEGORIES, calls, strict=True))
    return reports


def test_gallery_sizes_of_both_modes_match_the_files(synthetic_root, evaluations):
    fashioniq = synthetic_root / "fashioniq"
    for category in CATEGORIES:
        val = read_json(fashioniq / "captions" / f"cap.{category}.val.json")
        split = set(read_json(fashioniq / "image_splits" / f"split.{category}.val.json"))
        triplet_images = images_of(val)
        assert triplet_images <= split and len(split) > len(triplet_images)  # the split file adds distractors
        expected = {"triplets": len(triplet_images), "split": len(split)}
        for mode, size in expected.items():
            record = evaluations[mode]["options"]
            assert record["gallery"] == mode and record["exclude_reference"] is False
            assert record["sets"][category] == {"queries": len(val), "gallery": size}
    # A larger gallery (the same queries and targets plus distractors) can only push targets down.
    for category in CATEGORIES:
        for k in (1, 5, 10, 50):
            key = f"{category}_r{k}"
            assert evaluations["split"]["metrics"][key] <= evaluations["triplets"]["metrics"][key]


def test_exclude_reference_is_recorded_and_removes_each_query_reference(synthetic_root, evaluations):
    kept, excluded = evaluations["triplets"], evaluations["triplets_excluded"]
    assert excluded["options"]["exclude_reference"] is True and excluded["options"]["gallery"] == "triplets"
    assert excluded["options"]["sets"] == kept["options"]["sets"]
    for category in CATEGORIES:
        val = read_json(synthetic_root / "fashioniq" / "captions" / f"cap.{category}.val.json")
        gallery = sorted(images_of(val))  # the evaluator's gallery order: sorted names
        assert kept["excluded"][category] is None and evaluations["split"]["excluded"][category] is None
        assert excluded["excluded"][category] == [[gallery.index(t["candidate"])] for t in val]
        for k in (1, 5, 10, 50):
            key = f"{category}_r{k}"
            # Removing a candidate that is not the target never moves the target down.
            assert excluded["metrics"][key] >= kept["metrics"][key], key


# ----------------------------------------------------------------------------- what a run reads, and when


@dataclass
class Trace:
    """Reads during a run, tagged `training` (incl. the per-epoch selection) or `final` (the val report)."""

    phase: str = "training"
    images: list[tuple[str, str]] = field(default_factory=list)  # (image name, phase)
    queries: list[tuple[str, int, str]] = field(default_factory=list)  # (caption file name, entry, phase)
    train_entries: list[int] = field(default_factory=list)  # entries of cap.train.json the training set served
    evaluations: list[tuple[str, str]] = field(default_factory=list)  # (evaluator name, phase)

    def image_names(self, phase: str) -> set[str]:
        return {name for name, p in self.images if p == phase}

    def query_files(self, phase: str) -> set[str]:
        return {source for source, _, p in self.queries if p == phase}


@contextlib.contextmanager
def traced() -> Iterator[Trace]:
    trace = Trace()
    load_image, query_item, train_item = fiq.load_image, fiq.TGIRQueryDataset.__getitem__, fiq.TGIRTrainDataset.__getitem__
    evaluate, report = TGIREvaluator.run, TGIREvaluator.report

    def traced_load_image(path):
        trace.images.append((Path(path).stem, trace.phase))
        return load_image(path)

    def traced_query_item(self, i):
        trace.queries.append((Path(self.triplets[i].source).name, self.positions[i], trace.phase))
        return query_item(self, i)

    def traced_train_item(self, i):
        trace.train_entries.append(self.positions[i])
        return train_item(self, i)

    def traced_run(self, model):
        trace.evaluations.append((self.name, trace.phase))
        return evaluate(self, model)

    def traced_report(self, *args, **kwargs):
        trace.phase = "final"
        return report(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fiq, "load_image", traced_load_image)
        mp.setattr(fiq.TGIRQueryDataset, "__getitem__", traced_query_item)
        mp.setattr(fiq.TGIRTrainDataset, "__getitem__", traced_train_item)
        mp.setattr(TGIREvaluator, "run", traced_run)
        mp.setattr(TGIREvaluator, "report", traced_report)
        yield trace


def test_heldout_selection_never_reads_val_triplets_during_training(synthetic_root, tmp_path):
    with traced() as trace:
        assert run(synthetic_root, tmp_path) == 0
    fashioniq = synthetic_root / "fashioniq"
    train = read_json(fashioniq / "captions" / "cap.train.json")
    val = {c: read_json(fashioniq / "captions" / f"cap.{c}.val.json") for c in CATEGORIES}
    val_images = set().union(*(images_of(v) for v in val.values()))
    val_only = val_images - images_of(train)
    assert val_only  # otherwise the image check below could not fail

    assert trace.evaluations == [("heldout", "training"), ("val", "final")]
    split = read_json(tmp_path / "eval_sets" / "fashioniq_heldout.json")
    held_refs = set(split["heldout_labels"])
    assert len(held_refs) == split["count"] == len(split["heldout"]) > 0
    heldout = {i for i, t in enumerate(train) if t["candidate"] in held_refs}
    # During training: queries only from the held-out train triplets, no val image, no held-out triplet trained on.
    assert trace.query_files("training") == {"cap.train.json"}
    assert sorted(e for _, e, p in trace.queries if p == "training") == sorted(heldout)
    assert not trace.image_names("training") & val_only
    assert trace.image_names("training") <= images_of(train)
    assert trace.train_entries and not heldout & set(trace.train_entries)
    assert len(trace.train_entries) == (len(train) - len(heldout)) // 16 * 16
    assert not {train[i]["candidate"] for i in trace.train_entries} & held_refs
    # The final report: every val triplet of the three categories, val images only.
    assert trace.query_files("final") == {f"cap.{c}.val.json" for c in CATEGORIES}
    assert sum(p == "final" for _, _, p in trace.queries) == sum(len(v) for v in val.values())
    assert trace.image_names("final") <= val_images

    report = load_report(tmp_path / "results_val.json", task="fashioniq_tgir")
    assert report["selected_on"] == "heldout" and "selection_warning" not in report
    assert VAL_SELECTION_WARNING not in (tmp_path / "log.txt").read_text(encoding="utf-8")


def test_select_on_val_reads_val_and_warns(synthetic_root, tmp_path):
    with traced() as trace:
        assert run(synthetic_root, tmp_path, extra=("data.select_on=val",)) == 0
    assert trace.evaluations == [("val", "training"), ("val", "final")]
    assert trace.query_files("training") == {f"cap.{c}.val.json" for c in CATEGORIES}
    assert not (tmp_path / "eval_sets" / "fashioniq_heldout.json").exists()
    num_train = len(read_json(synthetic_root / "fashioniq" / "captions" / "cap.train.json"))
    assert len(trace.train_entries) == num_train // 16 * 16  # nothing held out
    log = (tmp_path / "log.txt").read_text(encoding="utf-8")
    assert log.count(VAL_SELECTION_WARNING) >= 2  # at start-up and at every selection evaluation
    report = load_report(tmp_path / "results_val.json", task="fashioniq_tgir")
    assert report["selected_on"] == "val" and report["selection_warning"] == VAL_SELECTION_WARNING


# ----------------------------------------------------------------------------- resume


def test_resume_continues_bit_for_bit(synthetic_root, tmp_path):
    two_epochs = ("train.epochs=2", "runtime.deterministic=true")
    assert run(synthetic_root, tmp_path / "straight", extra=two_epochs) == 0
    steps = torch.load(tmp_path / "straight" / "checkpoint_last.pth", map_location="cpu",
                       weights_only=False)["global_step"] // 2
    stop = steps + 3  # inside epoch 1, after one selection evaluation
    assert run(synthetic_root, tmp_path / "resumed", extra=(*two_epochs, f"train.stop_after_steps={stop}")) == 0
    stopped = torch.load(tmp_path / "resumed" / "checkpoint_last.pth", map_location="cpu", weights_only=False)
    assert (stopped["epoch"], stopped["iter_in_epoch"], stopped["global_step"]) == (1, 3, stop)
    assert not (tmp_path / "resumed" / "results_val.json").exists()
    assert run(synthetic_root, tmp_path / "resumed", "--resume", str(tmp_path / "resumed" / "checkpoint_last.pth"),
               extra=two_epochs) == 0

    a, b = (torch.load(tmp_path / d / "checkpoint_last.pth", map_location="cpu", weights_only=False)
            for d in ("straight", "resumed"))
    assert a["global_step"] == b["global_step"] == 2 * steps and a["best"] == b["best"]
    assert a["model"].keys() == b["model"].keys()
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    metrics = [load_report(tmp_path / d / "results_val.json")["metrics"] for d in ("straight", "resumed")]
    assert metrics[0] == metrics[1]


# ----------------------------------------------------------------------------- broken or missing inputs


@pytest.fixture
def broken_root(synthetic_root, tmp_path) -> Path:
    """A mirror of the synthetic FashionIQ folder (links; the images folder linked whole) to break one file of."""
    src, dst = synthetic_root / "fashioniq", tmp_path / "fashioniq"
    for folder in ("captions", "image_splits"):
        (dst / folder).mkdir(parents=True)
        for path in (src / folder).iterdir():
            (dst / folder / path.name).symlink_to(path)
    (dst / "images").symlink_to(src / "images", target_is_directory=True)
    return dst


def test_no_heldout_triplets_is_a_config_error(synthetic_root, tmp_path):
    for fraction in ("0", "1"):
        with pytest.raises(ConfigError, match="data.heldout_fraction must be in"):
            run(synthetic_root, tmp_path, extra=(f"data.heldout_fraction={fraction}",))


def test_missing_caption_files_name_themselves_and_the_command(synthetic_root, broken_root, tmp_path):
    merged = broken_root / "captions" / "cap.train.json"
    merged.unlink()
    with pytest.raises(FileNotFoundError) as info:
        run(synthetic_root, tmp_path / "a", data_root=broken_root)
    assert str(merged) in str(info.value)
    assert f"python prepare_dataset.py --fashioniq-root {broken_root}" in str(info.value)
    category = broken_root / "captions" / "cap.shirt.val.json"
    category.unlink()
    with pytest.raises(FileNotFoundError) as info:  # evaluation alone reads the val files
        run(synthetic_root, tmp_path / "b", "--evaluate", "--checkpoint", str(unused_weights(tmp_path)),
            data_root=broken_root)
    assert str(category) in str(info.value) and "python -m datasets.synthetic fashioniq" in str(info.value)


def unused_weights(folder: Path) -> Path:
    """A weights file that exists (checked before the run starts) but is never read: the data fails first."""
    path = folder / "unused.pth"
    path.write_bytes(b"")
    return path


def test_broken_caption_split_or_image_files_are_named(synthetic_root, broken_root, tmp_path):
    evaluate = ("--evaluate", "--checkpoint", str(unused_weights(tmp_path)))
    captions = broken_root / "captions" / "cap.dress.val.json"
    triplets = read_json(captions)
    captions.unlink()
    captions.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as info:
        run(synthetic_root, tmp_path / "a", *evaluate, data_root=broken_root)
    assert str(captions) in str(info.value)
    captions.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="no triplets") as info:  # an empty query set is an error, not R@K = 0
        run(synthetic_root, tmp_path / "b", *evaluate, data_root=broken_root)
    assert str(captions) in str(info.value)
    captions.write_text(json.dumps(triplets), encoding="utf-8")

    split = broken_root / "image_splits" / "split.toptee.val.json"
    split.unlink()
    with pytest.raises(FileNotFoundError) as info:
        run(synthetic_root, tmp_path / "c", *evaluate, data_root=broken_root, extra=("eval.gallery=split",))
    assert str(split) in str(info.value)

    images = broken_root / "images"
    images.unlink()
    images.mkdir()
    for path in (synthetic_root / "fashioniq" / "images").iterdir():
        if path.stem != triplets[0]["candidate"]:
            (images / path.name).symlink_to(path)
    with pytest.raises(DataError, match="image not found") as info:
        run(synthetic_root, tmp_path / "d", *evaluate, data_root=broken_root)
    assert str(images / f"{triplets[0]['candidate']}.png") in str(info.value) and "cap.dress.val.json" in str(info.value)

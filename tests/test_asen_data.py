"""ASEN++ split files, validator messages, triplet sampler and image datasets."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datasets.asen import (
    AsenImages,
    AsenSchema,
    TrainIndex,
    TripletBatchSampler,
    collate,
    load_eval_split,
    load_train_index,
    read_image_list,
    read_split_lines,
    read_train_labels,
    schema_from_config,
)
from engine.config import load_config
from engine.errors import DataError
from tasks.asen_schema import AsenConfig
from tests.asen_helpers import synthetic_asen, writable_copy

SCHEMA = AsenSchema(("colour", "sleeve_length", "pattern"), (4, 3, 3))


@pytest.fixture
def data(tmp_path_factory):
    return synthetic_asen(tmp_path_factory)


def data_cfg(folder, **overrides):
    sets = [f"DATA.BASE_PATH={folder.parent}", f"DATA.DATASET={folder.name}"]
    sets += [f"DATA.{k}={v}" for k, v in overrides.items()]
    return load_config(AsenConfig, [folder / "synthetic.yaml"], sets).DATA


def write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------ readers
def test_readers_parse_the_published_formats(tmp_path):
    write(tmp_path / "names.txt", "a/0.jpg\nb/1.jpg\n c/2.jpg \n\n")
    assert read_image_list(tmp_path / "names.txt") == ["a/0.jpg", "b/1.jpg", "c/2.jpg"]
    labels = read_train_labels(write(tmp_path / "l.txt", "0 0 2\n1 1 1\n2 1 0 2 2\n"), 3, (4, 3, 3))
    assert labels.fid.tolist() == [0, 1, 2, 2] and labels.attr.tolist() == [0, 1, 1, 2]
    assert labels.value.tolist() == [2, 1, 0, 2] and labels.line.tolist() == [1, 2, 3, 3]
    queries = read_split_lines(write(tmp_path / "q.txt", "0 1 2\n2\t0 3\n"), 3, (4, 3, 3))
    assert queries.fid.tolist() == [0, 2] and queries.value.tolist() == [2, 3]


@pytest.mark.parametrize("reader,text,message", [
    ("labels", "0 0 1\n1 0\n", r"l\.txt:2: expected 'fid a1 v1 \[a2 v2 \.\.\.\]'.*got 2 fields"),
    ("labels", "0 0 1 1\n", r"l\.txt:1: expected .*got 4 fields"),
    ("labels", "0 0 1\n1 x 1\n", r"l\.txt:2: field 2 'x' is not an integer"),
    ("labels", "0 0 1\n\n1 0 1\n", r"l\.txt:2: empty line"),
    ("labels", "0 0 1\n3 0 1\n", r"l\.txt:2: image index 3 out of range \[0, 3\)"),
    ("labels", "0 0 1\n1 3 0\n", r"l\.txt:2: attribute index 3 out of range \[0, 3\)"),
    ("labels", "0 0 1\n1 1 0 2 3\n", r"l\.txt:2: value index 3 out of range \[0, 3\) for attribute 2"),
    ("labels", "0 0 -1\n", r"l\.txt:1: value index -1 out of range"),
    ("split", "0 1 1\n0 1 1 1\n", r"l\.txt:2: expected 'fid attribute value' \(3 integers\), got 4 fields"),
    ("split", "0 0 4\n", r"l\.txt:1: value index 4 out of range \[0, 4\) for attribute 0"),
])
def test_malformed_lines_name_the_file_and_line(tmp_path, reader, text, message):
    path = write(tmp_path / "l.txt", text)
    read = read_train_labels if reader == "labels" else read_split_lines
    with pytest.raises(DataError, match=message):
        read(path, 3, (4, 3, 3))


def test_missing_file_names_the_command_that_creates_it(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found.*python -m datasets\.synthetic asen --out"):
        read_image_list(tmp_path / "nope.txt")


# ------------------------------------------------------------------ validator on the generated files
def test_synthetic_files_validate_and_load(data):
    cfg = data_cfg(data)
    schema = schema_from_config(cfg)
    assert schema.names == ("colour", "sleeve_length", "pattern") and schema.num_values == (4, 3, 3)
    index, images, _, _ = load_train_index(cfg, schema)
    assert len(images) == 240 and sum(index.counts) == 240 * 3
    split = load_eval_split(cfg, "VALID", schema)
    assert len(split.images) == 60 and len(split.queries) + len(split.candidates) == 60 * 3


def test_value_with_one_training_image_is_an_error_unless_restricted(data, tmp_path):
    bad = writable_copy(data, tmp_path / "asen")
    lines = (bad / "label_train.txt").read_text().splitlines()
    fids_with_blue = [i for i, line in enumerate(lines) if line.split()[1:3] == ["0", "2"]]
    for i in fids_with_blue[1:]:  # keep a single image with colour = 2; relabel the others
        parts = lines[i].split()
        parts[2] = "1"
        lines[i] = " ".join(parts)
    write(bad / "label_train.txt", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"label_train\.txt: every value needs >= 2 training images.*"
                                        r"attribute 0 \(colour\) value 2: 1 image\(s\).*RESTRICT_VALUES"):
        load_train_index(data_cfg(bad), SCHEMA)
    index, _, _, _ = load_train_index(data_cfg(bad, RESTRICT_VALUES="true"), SCHEMA)
    sampler = TripletBatchSampler(index, 3000, 16, seed=1, restrict=True)
    t = sampler.epoch_triplets(0)
    colour = t["attr"] == 0
    positives = Counter(index.images(0, 2).tolist())
    assert colour.any() and not any(positives[a] for a in t["anchor"][colour].tolist())  # v+ never the lone value
    assert (t["anchor"] != t["positive"]).all()


def test_attribute_with_queries_but_no_candidates_is_an_error(data, tmp_path):
    bad = writable_copy(data, tmp_path / "asen")
    kept = [line for line in (bad / "candidate_valid.txt").read_text().splitlines() if line.split()[1] != "2"]
    write(bad / "candidate_valid.txt", "\n".join(kept) + "\n")
    with pytest.raises(DataError, match=r"candidate_valid\.txt: attribute 2 \(pattern\) has \d+ queries .* no candidates"):
        load_eval_split(data_cfg(bad), "valid", SCHEMA)


def test_attribute_without_queries_is_reported(data, tmp_path, caplog):
    bad = writable_copy(data, tmp_path / "asen")
    for name in ("query_valid.txt", "candidate_valid.txt"):
        kept = [line for line in (bad / name).read_text().splitlines() if line.split()[1] != "1"]
        write(bad / name, "\n".join(kept) + "\n")
    logger = logging.getLogger("fashionfine")
    logger.addHandler(caplog.handler)
    try:
        split = load_eval_split(data_cfg(bad), "valid", SCHEMA)
    finally:
        logger.removeHandler(caplog.handler)
    assert 1 not in split.queries.attr.tolist()
    assert "no queries for attribute(s) sleeve_length" in caplog.text


def test_missing_image_and_unknown_split_are_errors(data, tmp_path):
    bad = writable_copy(data, tmp_path / "asen")
    (bad / "img").unlink()
    (bad / "img").mkdir()
    with pytest.raises(DataError, match=r"filenames_train\.txt:1: image file not found"):
        load_train_index(data_cfg(bad, CHECK_IMAGES="all"), SCHEMA)
    load_train_index(data_cfg(bad, CHECK_IMAGES="none"), SCHEMA)
    with pytest.raises(DataError, match="unknown evaluation split 'train'; use VALID or TEST"):
        load_eval_split(data_cfg(data), "train", SCHEMA)


# ------------------------------------------------------------------ triplet sampler
def small_index():
    # attribute 0: values 0, 1 (2 and 3 images); attribute 1: values 0, 1, 2 (2 images each)
    labels = SimpleNamespace(fid=np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]),
                             attr=np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1]),
                             value=np.array([0, 0, 2, 0, 1, 1, 0, 1, 1, 1, 2]))
    return TrainIndex.build(labels, AsenSchema(("a", "b"), (2, 3)))


def label_of(index, attr, fid):
    return {v for v in range(index.schema.num_values[attr]) if fid in index.images(attr, v).tolist()}


def test_triplets_follow_the_published_rules(data):
    cfg = data_cfg(data)
    index, _, _, _ = load_train_index(cfg, SCHEMA)
    sampler = TripletBatchSampler(index, 2000, 16, seed=3)
    t = sampler.epoch_triplets(0)
    assert len(sampler) == 125 and len(t["attr"]) == 2000
    for a, an, po, ne in zip(*(t[k].tolist() for k in ("attr", "anchor", "positive", "negative"))):
        va, vp, vn = label_of(index, a, an), label_of(index, a, po), label_of(index, a, ne)
        assert an != po and va & vp and not (va & vn)
    counts = np.bincount(t["attr"], minlength=3)
    assert counts.min() > 550  # uniform over attributes (2000 / 3 each)
    again = TripletBatchSampler(index, 2000, 16, seed=3).epoch_triplets(0)
    assert all((t[k] == again[k]).all() for k in t)
    other = sampler.epoch_triplets(1)
    assert not (t["anchor"] == other["anchor"]).all()


def test_values_are_drawn_uniformly_not_by_image_count():
    index = small_index()
    t = TripletBatchSampler(index, 20000, 16, seed=0).epoch_triplets(0)
    a0 = t["attr"] == 0
    pos_values = [min(label_of(index, 0, f)) for f in t["anchor"][a0][:3000].tolist()]
    share = np.mean(np.array(pos_values) == 0)
    assert 0.45 < share < 0.55  # value 0 has 2 images, value 1 has 3: still half of the positives


def test_batches_are_anchor_positive_negative_and_skip_resumes_mid_epoch():
    index = small_index()
    sampler = TripletBatchSampler(index, 50, 16, seed=0)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert [len(b) for b in batches] == [48, 48, 48, 6] and len(sampler) == 4
    t = sampler.epoch_triplets(2)
    first = batches[0]
    assert [k[0] for k in first[:16]] == t["anchor"][:16].tolist()
    assert [k[0] for k in first[16:32]] == t["positive"][:16].tolist()
    assert [k[1] for k in first[32:]] == t["attr"][:16].tolist()
    sampler.set_epoch(2, skip_batches=2)
    assert list(sampler) == batches[2:]


@pytest.mark.parametrize("mode", ["global", "per_rank"])
def test_rank_shards_cover_the_single_process_epoch(mode):
    index = small_index()
    single = TripletBatchSampler(index, 64, 16, seed=5)
    single.set_epoch(1)
    ranks = [TripletBatchSampler(index, 64, 16, seed=5, rank=r, world_size=2, batch_mode=mode) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    full, parts = list(single), [list(r) for r in ranks]
    if mode == "global":
        assert len(ranks[0]) == len(single) == 4
        for whole, p0, p1 in zip(full, *parts):
            for role in range(3):
                assert whole[16 * role:16 * role + 16] == p0[8 * role:8 * role + 8] + p1[8 * role:8 * role + 8]
    else:
        assert len(ranks[0]) == 2 and parts[0] == full[0::2] and parts[1] == full[1::2]
    with pytest.raises(ValueError, match="not divisible by the world size"):
        TripletBatchSampler(index, 64, 15, world_size=2)


# ------------------------------------------------------------------ datasets
def test_images_and_collate(data):
    images = read_image_list(data / "filenames_train.txt")
    ds = AsenImages(data, images, data / "filenames_train.txt", 64, [0.5] * 3, [0.5] * 3, keep_original=True)
    batch = collate([ds[(0, 1)], ds[(1, 2)], ds[(2, 0)]])
    assert batch["image"].shape == (3, 3, 64, 64) and batch["attr"].tolist() == [1, 2, 0]
    assert batch["original"].dtype == torch.uint8 and batch["original"].shape[:2] == (3, 3)
    for i, (h, w) in enumerate(batch["size"].tolist()):
        assert batch["original"][i, :, :h, :w].float().mean() > 0
        assert (h, w) in ((160, 128), (128, 160), (144, 144))
    no_orig = AsenImages(data, images, data / "filenames_train.txt", 64, [0.5] * 3, [0.5] * 3, keep_original=False)
    assert set(collate([no_orig[(0, 0)]])) == {"image", "attr"}


def test_unreadable_image_names_the_list_line(tmp_path):
    write(tmp_path / "broken.png", "not a png")
    ds = AsenImages(tmp_path, ["broken.png"], tmp_path / "list.txt", 64, [0.5] * 3, [0.5] * 3, keep_original=False)
    with pytest.raises(DataError, match=r"list\.txt:1: cannot read image .*broken\.png"):
        ds[(0, 0)]

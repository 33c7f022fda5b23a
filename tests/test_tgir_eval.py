"""FashionIQ TGIR evaluation: gallery modes, reference exclusion, metric keys, averages, report."""

from __future__ import annotations

import pytest
import torch

from engine.errors import DataError
from evaluation.report import load_report
from evaluation.tgir import (
    QuerySet,
    TGIROptions,
    build_gallery,
    evaluate_tgir,
    format_tgir_table,
    tgir_ranks,
    write_tgir_report,
)

# Hand-made val file: (reference, target) per triplet; the split file adds two distractors x, y.
REFS = ["a", "c", "d", "b"]
TARGETS = ["b", "b", "e", "a"]
SPLIT = ["y", "a", "b", "c", "d", "e", "x"]


def one_hot_embeddings(names: list[str]) -> dict[str, torch.Tensor]:
    return {n: torch.nn.functional.one_hot(torch.tensor(i), 16).float() for i, n in enumerate(sorted(names))}


def test_gallery_modes_sizes_and_order():
    assert build_gallery("triplets", REFS, TARGETS) == ["a", "b", "c", "d", "e"]
    assert build_gallery("split", REFS, TARGETS, SPLIT) == ["a", "b", "c", "d", "e", "x", "y"]
    with pytest.raises(DataError, match="not in the split gallery"):
        build_gallery("split", REFS, TARGETS + ["z"], SPLIT, source="split.dress.val.json")
    with pytest.raises(DataError, match="empty gallery"):
        build_gallery("split", [], [], [])


def test_target_identical_to_query_ranks_first():
    gallery = build_gallery("split", REFS, TARGETS, SPLIT)
    emb = one_hot_embeddings(SPLIT)
    gallery_emb = torch.stack([emb[n] for n in gallery])
    query = torch.stack([emb[t] for t in TARGETS])
    ranks = tgir_ranks(query, gallery_emb, gallery, TARGETS, REFS, exclude_reference=True)
    assert ranks.tolist() == [0, 0, 0, 0]
    result = evaluate_tgir({"dress": QuerySet(query, REFS, TARGETS, gallery, emb)})
    assert result.metrics["dress_r1"] == 100.0


def test_exclude_reference_removes_it_from_every_ranking():
    gallery = build_gallery("triplets", REFS, TARGETS)
    emb = one_hot_embeddings(gallery)
    gallery_emb = torch.stack([emb[n] for n in gallery])
    # each query is closest to its reference, then to its target, then to nothing else
    query = torch.stack([emb[r] + 0.5 * emb[t] for r, t in zip(REFS, TARGETS)])
    kept = tgir_ranks(query, gallery_emb, gallery, TARGETS, REFS, exclude_reference=False)
    dropped = tgir_ranks(query, gallery_emb, gallery, TARGETS, REFS, exclude_reference=True)
    assert kept.tolist() == [1, 1, 1, 1] and dropped.tolist() == [0, 0, 0, 0]
    # a reference outside the gallery has nothing to exclude; a reference equal to its target is kept
    assert tgir_ranks(query[:1], gallery_emb, gallery, ["b"], ["zz"], exclude_reference=True).tolist() == [1]
    same = tgir_ranks(emb["c"][None], gallery_emb, gallery, ["c"], ["c"], exclude_reference=True)
    assert same.tolist() == [0]


def test_metric_keys_averages_and_report(tmp_path):
    g = torch.Generator().manual_seed(0)
    sets = {}
    for c in ("dress", "shirt", "toptee", "all"):
        gallery = [f"{c}{i:02d}" for i in range(60)]
        emb = torch.randn(60, 8, generator=g)
        targets = [gallery[i] for i in torch.randint(0, 60, (30,), generator=g).tolist()]
        refs = [gallery[i] for i in torch.randint(0, 60, (30,), generator=g).tolist()]
        sets[c] = QuerySet(torch.randn(30, 8, generator=g), refs, targets, gallery, emb)
    result = evaluate_tgir(sets, TGIROptions(gallery="split", exclude_reference=True))
    m = result.metrics
    for c in ("dress", "shirt", "toptee", "all"):
        assert {f"{c}_r{k}" for k in (1, 5, 10, 50)} | {f"{c}_img_r_mean"} <= set(m)
        assert m[f"{c}_img_r_mean"] == pytest.approx((m[f"{c}_r1"] + m[f"{c}_r5"] + m[f"{c}_r10"]) / 3)
    cats = ("dress", "shirt", "toptee")
    assert m["sum"] == pytest.approx(sum(m[f"{c}_r10"] + m[f"{c}_r50"] for c in cats))
    assert m["avg_r10"] == pytest.approx(sum(m[f"{c}_r10"] for c in cats) / 3)
    assert m["avg"] == pytest.approx((m["avg_r10"] + m["avg_r50"]) / 2) == pytest.approx(m["sum"] / 6)
    assert result.options["averaged_over"] == list(cats)
    assert result.options["sets"]["dress"] == {"queries": 30, "gallery": 60}
    table = format_tgir_table(m, list(sets))
    assert [line.split()[0] for line in table.splitlines()[2:7]] == ["dress", "shirt", "toptee", "all", "average"]
    path = write_tgir_report(tmp_path / "tgir.json", result)
    report = load_report(path, task="fashioniq_tgir")
    assert report["options"]["gallery"] == "split" and report["options"]["exclude_reference"] is True
    with pytest.raises(ValueError, match="different protocol options"):
        load_report(path, options={**result.options, "exclude_reference": False})


def test_single_held_out_set_is_its_own_average():
    emb = one_hot_embeddings(SPLIT)
    gallery = build_gallery("triplets", REFS, TARGETS)
    query = torch.stack([emb[t] for t in TARGETS])
    m = evaluate_tgir({"heldout": QuerySet(query, REFS, TARGETS, gallery, emb)}).metrics
    assert m["sum"] == m["heldout_r10"] + m["heldout_r50"] == 200.0


def test_empty_or_inconsistent_inputs_are_errors():
    emb = torch.eye(3)
    with pytest.raises(DataError, match="empty query set"):
        tgir_ranks(torch.zeros(0, 3), emb, ["a", "b", "c"], [], [])
    with pytest.raises(DataError, match="not in the gallery"):
        tgir_ranks(emb[:1], emb, ["a", "b", "c"], ["q"], ["a"])
    with pytest.raises(ValueError, match="duplicate"):
        tgir_ranks(emb[:1], emb, ["a", "a", "c"], ["a"], ["a"])
    with pytest.raises(ValueError, match="gallery must be"):
        TGIROptions(gallery="official")

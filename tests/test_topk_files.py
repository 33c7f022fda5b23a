"""Per-query top-K lists and their JSON Lines files: the lists follow the metric's own rank order (ties, BLIP
top-k filling, excluded references, ASEN++ attribute candidates), the rank in a file is the one the metric
used (the metrics recomputed from the files match the results JSON) and the position of the positive."""

from __future__ import annotations

import json
import math

import pytest
import torch

import asen_main
import tgir
from datasets.asen import load_eval_split, schema_from_config
from datasets.fashiongen import FashionGenSplit
from datasets.synthetic import generate_asen
from datasets.text import load_tokenizer
from engine.config import ConfigError, load_config
from engine.seeding import seed_everything
from evaluation.cmr import CMROptions, evaluate_cmr
from evaluation.map import attribute_map
from evaluation.recall import recall_at_k
from evaluation.tgir import QuerySet, TGIROptions, evaluate_tgir
from evaluation.topk import TopK, read_topk, topk_lines
from models.fine_tgir import FineTGIRModel
from tasks.asen import build_model
from tasks.asen_schema import AsenConfig
from tasks.fine_schema import TGIRConfig
from tests.asen_helpers import tiny_args
from tests.view_helpers import evaluate_cmr_run, fresh_cmr_checkpoint

pytestmark = pytest.mark.usefixtures("restore_torch_globals")  # tests/conftest.py


def stable_order(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def check_positions(top: TopK, ranks: torch.Tensor) -> None:
    """The rank of each query is the position of the first positive in its list (when it is within the list)."""
    assert torch.equal(top.ranks, ranks)
    for flags, rank in zip(top.positive.tolist(), ranks.tolist()):
        if rank < top.k:
            assert flags.index(True) == rank
        else:
            assert True not in flags


def check_file_positions(records: list[dict], k: int) -> None:
    for rec in records:
        assert len(rec["ids"]) == len(rec["scores"]) == len(rec["positive"]) <= k
        if rec["rank"] is not None and rec["rank"] < len(rec["ids"]):
            assert rec["positive"].index(True) == rec["rank"]
        else:
            assert True not in rec["positive"]


# ----------------------------------------------------------------------------- evaluation level


@pytest.mark.parametrize("blip", [False, True])
def test_cmr_top_k_is_the_stable_rank_order_with_ties_and_top_k_filling(blip):
    gen = torch.Generator().manual_seed(0)
    product_rows = [[0, 1], [2], [3, 4, 5], [6], [7, 8], [9]]
    text = torch.randint(0, 2, (6, 4), generator=gen).float()  # 0/1 vectors: many exactly tied scores
    image = torch.randint(0, 2, (10, 4), generator=gen).float()
    options = CMROptions(protocol="full", blip=blip, k_test=3)
    result = evaluate_cmr(product_rows, text_emb=text, image_emb=image, options=options, top_k=4)
    assert result.metrics == evaluate_cmr(product_rows, text_emb=text, image_emb=image, options=options).metrics
    owner = torch.tensor([p for p, rows in enumerate(product_rows) for _ in rows])
    for direction, scores in (("t2i", text @ image.T), ("i2t", image @ text.T)):
        if blip:  # each query keeps its 3 best scores, the others become -100
            kept = torch.full_like(scores, -100.0)
            vals, idx = scores.topk(3, dim=1)
            scores = kept.scatter_(1, idx, vals)
        top = result.top[direction]
        expected = stable_order(scores)[:, :4]
        assert torch.equal(top.indices, expected)
        assert torch.equal(top.scores, scores.gather(1, expected))
        truth = owner[expected] == torch.arange(6)[:, None] if direction == "t2i" else expected == owner[:, None]
        assert torch.equal(top.positive, truth)
        check_positions(top, result.ranks[direction])


def test_tgir_top_k_keeps_the_target_and_excludes_the_reference():
    gen = torch.Generator().manual_seed(1)
    names = [f"img{i}" for i in range(8)]
    query = torch.randint(0, 2, (6, 3), generator=gen).float()
    gallery = torch.randint(0, 2, (8, 3), generator=gen).float()
    refs, targets = ["img0", "img1", "img2", "img3", "img5", "img4"], ["img1", "img1", "img7", "img3", "img6", "img2"]
    sets = {"dress": QuerySet(query, refs, targets, names, gallery)}
    result = evaluate_tgir(sets, TGIROptions(exclude_reference=True), top_k=8)
    top = result.top["dress"]
    check_positions(top, result.ranks["dress"])
    for q, (ref, target) in enumerate(zip(refs, targets)):
        listed = [names[i] for i in top.indices[q].tolist()]
        assert listed[top.positive[q].tolist().index(True)] == target
        if ref != target:  # the excluded reference scores -inf: last
            assert listed[-1] == ref and top.scores[q, -1] == float("-inf")
    line = json.loads(topk_lines(top, refs, names)[0])
    assert line["scores"][-1] is None  # -inf is written as null


def test_asen_top_k_ranks_each_query_within_its_attribute_and_keeps_the_map():
    gen = torch.Generator().manual_seed(2)
    query, cands = torch.randint(0, 2, (12, 3), generator=gen).float(), torch.randint(0, 2, (20, 3), generator=gen).float()
    q_attr, q_val = torch.randint(0, 2, (12,), generator=gen), torch.randint(0, 3, (12,), generator=gen)
    c_attr = torch.tensor([0] * 17 + [1] * 3)  # attribute 1 has 3 candidates: its lists are padded
    c_val = torch.randint(0, 3, (20,), generator=gen)
    result = attribute_map(query, q_attr, q_val, cands, c_attr, c_val, 2, top_k=5)
    plain = attribute_map(query, q_attr, q_val, cands, c_attr, c_val, 2)
    assert torch.equal(result.ap, plain.ap) and result.total == plain.total
    top = result.top
    for q in range(12):
        own = (c_attr == q_attr[q]).nonzero().squeeze(1)
        order = own[stable_order((query[q] @ cands[own].T)[None])[0]]
        assert top.indices[q].tolist() == (order[:5].tolist() + [-1] * 5)[:5]
        relevant = (c_val[order] == q_val[q]).tolist()
        assert int(top.ranks[q]) == (relevant.index(True) if True in relevant else -1)
        assert top.positive[q, : len(order)].tolist() == relevant[:5]
    record = json.loads(topk_lines(top, list(range(12)), list(range(20)))[int((q_attr == 1).nonzero()[0])])
    assert len(record["ids"]) == 3 and all(c >= 17 for c in record["ids"])


# ----------------------------------------------------------------------------- the files of real evaluations


def test_cmr_evaluation_writes_both_directions_with_the_metric_ranks(synthetic_root, tmp_path):
    checkpoint = fresh_cmr_checkpoint(synthetic_root, tmp_path)
    assert evaluate_cmr_run(synthetic_root, tmp_path / "eval", checkpoint, "--topk", "5") == 0
    out = tmp_path / "eval"
    metrics = json.loads((out / "results_test.json").read_text(encoding="utf-8"))["metrics"]
    split = FashionGenSplit(synthetic_root / "fashiongen", "validation")
    product_of_row = split.product_ids[split.row_product].tolist()
    t2i, i2t = read_topk(out / "topk_test_t2i.jsonl"), read_topk(out / "topk_test_i2t.jsonl")
    assert [r["query"] for r in t2i] == split.product_ids.tolist()  # FashionGen product ids, evaluation order
    assert [r["query"] for r in i2t] == list(range(split.num_rows))  # HDF5 rows
    for name, records, prefix in (("t2i", t2i, "img_r"), ("i2t", i2t, "txt_r")):
        assert recall_at_k([r["rank"] for r in records], (1, 5, 10), prefix) == pytest.approx(
            {k: v for k, v in metrics.items() if k.startswith(prefix) and k[len(prefix):].isdigit()}), name
        check_file_positions(records, 5)
        assert all(len(r["ids"]) == 5 and r["scores"] == sorted(r["scores"], reverse=True) for r in records)
    for rec in t2i:
        assert rec["positive"] == [product_of_row[row] == rec["query"] for row in rec["ids"]]
    for rec in i2t:
        assert rec["positive"] == [pid == product_of_row[rec["query"]] for pid in rec["ids"]]
    assert not list(out.glob("gallery_*"))  # no page without --gallery
    assert evaluate_cmr_run(synthetic_root, tmp_path / "none", checkpoint, "--topk", "0") == 0
    assert not list((tmp_path / "none").glob("topk_*")) and (tmp_path / "none" / "results_test.json").is_file()


def test_tgir_evaluation_writes_each_category_with_the_metric_ranks(synthetic_root, tmp_path):
    sets = [f"data.root={synthetic_root / 'fashioniq'}", f"data.tokenizer={synthetic_root / 'tokenizer'}",
            "model.vision.image_res=32", "data.max_words=24", "runtime.num_workers=0", "runtime.cpu_threads=1",
            "train.progress_bar=false", "eval.exclude_reference=true"]
    cfg = load_config(TGIRConfig, ["configs/tgir_tiny.yaml"], sets)
    seed_everything(cfg.runtime.seed, 0)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    model = FineTGIRModel(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=len(tokenizer),
                          sep_token_id=tokenizer.sep_token_id)
    torch.save({"model": model.state_dict()}, tmp_path / "fresh.pth")
    assert tgir.main(["--config", "configs/tgir_tiny.yaml", "--output_dir", str(tmp_path / "eval"), "--evaluate",
                      "--checkpoint", str(tmp_path / "fresh.pth"), "--set", *sets]) == 0
    metrics = json.loads((tmp_path / "eval" / "results_val.json").read_text(encoding="utf-8"))["metrics"]
    for category in cfg.eval.categories:
        triplets = json.loads((synthetic_root / "fashioniq" / "captions" / f"cap.{category}.val.json").read_text())
        records = read_topk(tmp_path / "eval" / f"topk_val_{category}.jsonl")
        assert [(r["query"], r["target"]) for r in records] == [(t["candidate"], t["target"]) for t in triplets]
        assert recall_at_k([r["rank"] for r in records], (1, 5, 10, 50), f"{category}_r") == pytest.approx(
            {f"{category}_r{k}": metrics[f"{category}_r{k}"] for k in (1, 5, 10, 50)})
        check_file_positions(records, 10)
        for rec in records:
            assert rec["positive"] == [name == rec["target"] for name in rec["ids"]]
            if rec["query"] != rec["target"] and rec["query"] in rec["ids"]:  # excluded: only at the tail
                assert rec["scores"][rec["ids"].index(rec["query"])] is None


def test_asen_test_writes_per_attribute_top_k_with_the_aps_of_the_map(tmp_path_factory, tmp_path):
    data = tmp_path_factory.mktemp("asen_topk") / "asen"
    generate_asen(data, seed=0, n_train=40, n_valid=20, n_test=20)
    args = tiny_args(data, 1, tmp_path)
    cfg = load_config(AsenConfig, args[1:3], args[4:])
    schema = schema_from_config(cfg.DATA)
    seed_everything(0, 0)
    torch.save({"model": build_model(cfg, schema.num_attributes).state_dict()}, tmp_path / "fresh.pth")
    assert asen_main.main([*args, "--resume", str(tmp_path / "fresh.pth"), "--test", "test", "--topk", "4",
                           "--out", str(tmp_path / "res" / "map.json")]) == 0
    report = json.loads((tmp_path / "res" / "map.json").read_text(encoding="utf-8"))
    records = read_topk(tmp_path / "res" / "topk_test.jsonl")  # next to the results JSON
    split = load_eval_split(cfg.DATA, "test", schema)
    assert [r["query"] for r in records] == [split.images[f] for f in split.queries.fid]
    assert [r["attribute"] for r in records] == [schema.names[a] for a in split.queries.attr]
    assert 100 * sum(r["ap"] for r in records) / len(records) == pytest.approx(report["metrics"]["map"])
    check_file_positions(records, 4)
    label = {(split.images[f], schema.names[a]): v for f, a, v in
             zip(split.candidates.fid, split.candidates.attr, split.candidates.value)}
    for rec in records:
        # every result is a candidate of the query's attribute; positive = the same value
        assert rec["positive"] == [label[(path, rec["attribute"])] == rec["value"] for path in rec["ids"]]
        assert all(math.isfinite(s) for s in rec["scores"])
        assert rec["rank"] is None or rec["ap"] > 0


def test_negative_k_is_rejected(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="K >= 0"):
        evaluate_cmr([[0]], text_emb=torch.ones(1, 2), image_emb=torch.ones(1, 2), options=CMROptions(protocol="full"),
                     top_k=-1)
    with pytest.raises(ConfigError, match="--topk and --gallery must be >= 0"):
        evaluate_cmr_run(synthetic_root, tmp_path, tmp_path / "unused.pth", "--topk", "-1")

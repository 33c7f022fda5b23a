"""Optional ITM re-ranking of the FashionGen CMR full protocol (eval.rerank_k): off by default and then exactly
the published metrics; on, only each query's top k are re-ordered, by the ITM score of each pair (batched ==
one pair at a time), and the metrics come from the new ranks."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from datasets.fashiongen import FashionGenSplit
from datasets.text import load_tokenizer
from engine.config import ConfigError, load_config
from evaluation.cmr import CMROptions, ProductIndex, evaluate_cmr, full_metrics, full_ranks, write_cmr_report
from models.bert import TextConfig
from models.fine_config import FineModelConfig, LossConfig
from models.fine_retrieval import FineRetrievalModel
from models.vit import VisionConfig
from tasks.blip_schema import BlipEvalConfig
from tasks.cmr_eval import ITMScorer
from tasks.cmr_eval import test_evaluator as cmr_test_evaluator
from tasks.compat import CompatConfig
from tasks.fine_blip import BlipCMREvaluator
from tasks.fine_common import fine_model
from tasks.fine_schema import RetrievalConfig

ROOT = Path(__file__).resolve().parents[1]
VOCAB, CLS, SEP, T, RES = 40, 11, 12, 12, 16
K, TOP = 4, 9


def tiny_model() -> FineRetrievalModel:
    torch.manual_seed(0)
    cfg = FineModelConfig(
        vision=VisionConfig(image_res=RES, patch_size=8, width=16, depth=1, heads=2, init_std=0.2),
        text=TextConfig(hidden=16, layers=2, heads=2, intermediate=32, fusion_layer=1, dropout=0.0,
                        max_positions=32, initializer_range=0.2),
        embed_dim=8, queue_size=8, momentum=0.9)
    model = FineRetrievalModel(cfg, LossConfig(), CompatConfig().model_behaviour(), vocab_size=VOCAB, sep_token_id=SEP)
    return model.eval()


@pytest.fixture(scope="module")
def case() -> SimpleNamespace:
    """A tiny random model, 10 products with 1-3 images each and texts of different lengths, encoded once."""
    rng = random.Random(0)
    product_rows, row = [], 0
    for _ in range(10):
        n = rng.randint(1, 3)
        product_rows.append(list(range(row, row + n)))
        row += n
    g = torch.Generator().manual_seed(0)
    images = torch.randn(row, 3, RES, RES, generator=g)
    lengths = torch.randint(3, T + 1, (len(product_rows),), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.randint(14, VOCAB, (len(product_rows), T), generator=g) * mask
    ids[:, 0] = CLS
    ids[torch.arange(len(lengths)), lengths - 1] = SEP
    model = tiny_model()
    image_emb, tokens = model.encode_image_tokens(images)
    text_emb, states = model.encode_text_states(ids, mask)
    assert torch.equal(image_emb, model.encode_image(images)) and torch.equal(text_emb, model.encode_text(ids, mask))
    scorer = ITMScorer(model, tokens, states, mask, batch_size=3, device=torch.device("cpu"), precision="fp32")
    return SimpleNamespace(model=model, rows=product_rows, tokens=tokens, states=states, mask=mask,
                           text_emb=text_emb, image_emb=image_emb, scorer=scorer, index=ProductIndex.build(product_rows))


def one_pair(case: SimpleNamespace, text: int, row: int) -> float:
    """The ITM score of one (text, image) pair, untrimmed, alone in its forward."""
    return float(case.model.itm_scores(case.tokens[row : row + 1], case.states[text : text + 1],
                                       case.mask[text : text + 1])[0])


def evaluate(case: SimpleNamespace, k: int, scorer=None, top_k: int = TOP):
    return evaluate_cmr(case.rows, text_emb=case.text_emb, image_emb=case.image_emb, top_k=top_k,
                        options=CMROptions(protocol="full", rerank_k=k), pair_scores=scorer or case.scorer)


def test_off_gives_exactly_the_published_metrics_and_scores_nothing(case):
    def never(texts, rows):
        raise AssertionError("scored pairs with rerank_k 0")

    off = evaluate(case, 0, never)
    published = evaluate_cmr(case.rows, text_emb=case.text_emb, image_emb=case.image_emb, top_k=TOP,
                             options=CMROptions(protocol="full"))
    assert off.metrics == published.metrics and "rerank" not in off.options
    for d in ("i2t", "t2i"):
        assert torch.equal(off.ranks[d], published.ranks[d])
        assert torch.equal(off.top[d].indices, published.top[d].indices)


def test_batched_scores_equal_one_pair_at_a_time(case):
    texts = torch.tensor([p for p in range(len(case.rows)) for _ in range(case.index.num_rows)])
    rows = torch.arange(case.index.num_rows).repeat(len(case.rows))
    batched = case.scorer(texts, rows)
    single = torch.tensor([one_pair(case, int(t), int(r)) for t, r in zip(texts, rows)])
    assert batched.shape == (texts.numel(),) and batched.std() > 1e-3  # the pairs do score differently
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_only_the_top_k_are_reordered_by_the_itm_score(case):
    plain, reranked = evaluate(case, 0), evaluate(case, K)
    index = case.index
    for d in ("i2t", "t2i"):
        before, after = plain.top[d].indices, reranked.top[d].indices
        assert torch.equal(before[:, K:], after[:, K:])  # positions >= k keep the embedding order
        assert torch.equal(before[:, :K].sort(1).values, after[:, :K].sort(1).values)
        assert torch.equal(plain.top[d].scores[:, K:], reranked.top[d].scores[:, K:])
        for q in range(before.shape[0]):
            head = before[q, :K].tolist()
            itm = [one_pair(case, c, q) if d == "i2t" else one_pair(case, q, c) for c in head]
            expected = [head[j] for j in sorted(range(K), key=lambda j: -itm[j])]  # stable: ties keep order
            assert after[q, :K].tolist() == expected, (d, q)
        # the ranks are the first positive of the new order, the embedding rank below the top k
        owner = index.text_of_row
        positive = after == owner[:, None] if d == "i2t" else owner[after] == torch.arange(index.num_products)[:, None]
        assert torch.equal(reranked.top[d].positive, positive)
        first = torch.where(positive.any(1), positive.int().argmax(1), -1)
        emb = plain.ranks[d]
        assert torch.equal(reranked.ranks[d], torch.where(emb < K, first, emb))
        assert torch.equal(reranked.ranks[f"{d}_embedding"], emb)
    moved = [bool((reranked.ranks[d] != plain.ranks[d]).any()) for d in ("i2t", "t2i")]
    assert any(moved)  # the random ITM head does move some positives: the case tests something
    assert reranked.metrics == full_metrics(reranked.ranks["i2t"], reranked.ranks["t2i"])
    rerank = reranked.options["rerank"]
    assert rerank["k"] == K and rerank["embedding_metrics"] == plain.metrics
    # each distinct (text, image) pair of both directions scored once
    pairs = {(c, q) for q, row in enumerate(plain.top["i2t"].indices[:, :K].tolist()) for c in row}
    pairs |= {(q, c) for q, row in enumerate(plain.top["t2i"].indices[:, :K].tolist()) for c in row}
    assert rerank["pairs_scored"] == len(pairs)


def test_ties_keep_the_embedding_order_and_an_oracle_puts_positives_first(case):
    same = evaluate(case, K, lambda texts, rows: torch.zeros(texts.numel()))
    plain = evaluate(case, 0)
    assert same.metrics == plain.metrics
    owner = case.index.text_of_row
    oracle = evaluate(case, K, lambda texts, rows: (owner[rows] == texts).float())
    i2t, t2i = full_ranks(case.index, text_emb=case.text_emb, image_emb=case.image_emb)
    assert torch.equal(oracle.ranks["i2t"], torch.where(i2t < K, 0, i2t))
    assert torch.equal(oracle.ranks["t2i"], torch.where(t2i < K, 0, t2i))


def test_bad_scorers_and_options_are_refused(case):
    with pytest.raises(ValueError, match="scores for"):
        evaluate(case, K, lambda texts, rows: torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        evaluate(case, K, lambda texts, rows: torch.full((texts.numel(),), float("nan")))
    with pytest.raises(ValueError, match="pair scorer"):
        evaluate_cmr(case.rows, text_emb=case.text_emb, image_emb=case.image_emb,
                     options=CMROptions(protocol="full", rerank_k=K))
    for bad in (dict(rerank_k=-1), dict(rerank_k=2, blip=True, protocol="full"), dict(rerank_k=2, protocol="sampled")):
        with pytest.raises(ValueError):
            CMROptions(**bad)
    tiny = ROOT / "configs" / "retrieval_tiny.yaml"
    for sets, match in ((["eval.rerank_k=-1"], "rerank_k"), (["eval.rerank_batch=0"], "rerank_batch"),
                        (["eval.rerank_k=4", "eval.protocol=sampled"], "full protocol")):
        with pytest.raises(ConfigError, match=match):
            load_config(RetrievalConfig, [tiny], sets)
    with pytest.raises(ConfigError, match="rerank_k"):  # the BLIP variant has no re-ranking
        BlipCMREvaluator(SimpleNamespace(num_products=10), BlipEvalConfig(protocol="full", rerank_k=4), name="test",
                         batch_size=2, num_workers=0, device=torch.device("cpu"), precision="fp32",
                         output_dir=Path("unused"), progress_bar=False)


def test_the_evaluator_reranks_from_one_extraction(synthetic_root: Path, tmp_path: Path):
    sets = [f"data.root={synthetic_root / 'fashiongen'}", f"data.tokenizer={synthetic_root / 'tokenizer'}",
            "model.vision.image_res=32", "data.max_words=24", "eval.sampled.set_len=20", "data.eval_batch_size=128"]
    results = {}
    for k in (0, 2):
        cfg = load_config(RetrievalConfig, [ROOT / "configs/retrieval_tiny.yaml"], [*sets, f"eval.rerank_k={k}",
                                                                                    "eval.rerank_batch=100"])
        tokenizer = load_tokenizer(cfg.data.tokenizer)
        torch.manual_seed(0)
        model = fine_model(FineRetrievalModel, cfg, tokenizer)
        evaluator = cmr_test_evaluator(cfg.data, cfg.eval, tokenizer, 32, FashionGenSplit(cfg.data.root, "validation"),
                                   tmp_path / str(k), 0, torch.device("cpu"), "fp32", False)
        with mock.patch.object(model, "encode_image", wraps=model.encode_image) as encode_image:
            results[k] = evaluator.run(model)
        assert encode_image.called == (k == 0)  # the re-ranking run encodes images through encode_image_tokens only
    off, on = results[0], results[2]
    assert on.options["rerank"]["embedding_metrics"] == {m: off.metrics[m] for m in on.options["rerank"]["embedding_metrics"]}
    assert {m: v for m, v in on.metrics.items() if m.startswith("tiny_")} == \
        {m: v for m, v in off.metrics.items() if m.startswith("tiny_")}  # the sampled protocol is not re-ranked
    assert list(on.metrics) == list(off.metrics)
    path = write_cmr_report(tmp_path / "results_test.json", on)
    assert json.loads(path.read_text())["options"]["rerank"]["k"] == 2

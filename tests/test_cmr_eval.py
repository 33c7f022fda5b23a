"""FashionGen CMR protocols: full (product-level ranks), sampled sets (draw order, files, defects), report."""

from __future__ import annotations

import json
import random

import pytest
import torch

from engine.errors import DataError
from evaluation.cmr import (
    CMROptions,
    ProductIndex,
    SampledOptions,
    SampledSetProvider,
    _negative_pool,
    draw_sampled_sets,
    evaluate_cmr,
    format_cmr_table,
    full_metrics,
    full_ranks,
    load_sampled_set,
    sampled_ranks,
    subcategory_pools,
    write_cmr_report,
)
from evaluation.report import load_report

FULL_KEYS = {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean",
             "full_sum"}
TINY_KEYS = {"tiny_txt_r1", "tiny_txt_r5", "tiny_txt_r10", "tiny_img_r1", "tiny_img_r5", "tiny_img_r10",
             "tiny_sum"}


def catalogue(num_products: int, sizes: dict[str, int] | None = None, seed: int = 0
              ) -> tuple[list[list[int]], list[str]]:
    """Contiguous rows, 1-3 poses per product, subcategories in blocks (`sizes`: products per subcategory)."""
    rng = random.Random(seed)
    sizes = sizes or {"shirts": num_products // 3, "jeans": num_products // 3}
    subs = [s for s, n in sizes.items() for _ in range(n)]
    subs += ["misc"] * (num_products - len(subs))
    product_rows, row_sub, row = [], [], 0
    for p in range(num_products):
        n = rng.randint(1, 3)
        product_rows.append(list(range(row, row + n)))
        row_sub += [subs[p]] * n
        row += n
    return product_rows, row_sub


def test_full_protocol_t2i_takes_min_over_product_images():
    product_rows = [[0, 1], [2], [3, 4, 5]]
    scores = torch.tensor([  # texts x images
        [0.1, 0.9, 0.8, 0.0, 0.0, 0.0],  # product 0: its image 1 ranks first -> 0
        [0.5, 0.0, 0.1, 0.9, 0.3, 0.2],  # product 1: image 2 behind 3, 0, 4, 5 -> 4
        [0.9, 0.0, 0.0, 0.1, 0.2, 0.8],  # product 2: best of 3,4,5 is 5 (0.8), behind 0 -> 1
    ])
    index = ProductIndex.build(product_rows)
    i2t, t2i = full_ranks(index, scores=scores)
    assert t2i.tolist() == [0, 4, 1]
    # image->text: column of S, rank of the row's product text among the three texts
    expected_i2t = []
    for r in range(6):
        col = scores[:, r].tolist()
        order = sorted(range(3), key=lambda t: (-col[t], t))
        expected_i2t.append(order.index(int(index.text_of_row[r])))
    assert i2t.tolist() == expected_i2t
    m = full_metrics(i2t, t2i)
    assert set(m) == FULL_KEYS
    assert m["img_r1"] == pytest.approx(100 / 3) and m["img_r5"] == 100.0
    assert m["r_mean"] == pytest.approx((m["txt_r1"] + m["img_r1"]) / 2)
    assert m["full_sum"] == pytest.approx(sum(m[f"{d}_r{k}"] for d in ("txt", "img") for k in (1, 5, 10)))


def test_embeddings_and_score_matrix_agree_and_blip_variant():
    product_rows, row_sub = catalogue(30)
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    image = torch.nn.functional.normalize(torch.randn(len(row_sub), 16, generator=g), dim=1)
    index = ProductIndex.build(product_rows)
    a = full_ranks(index, text_emb=text, image_emb=image, chunk_size=7)
    b = full_ranks(index, scores=text @ image.T)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    blip = evaluate_cmr(product_rows, row_sub, text_emb=text, image_emb=image,
                        options=CMROptions(protocol="full", blip=True, k_test=4)).metrics
    assert "full_sum" not in blip and not any(k.startswith("tiny") for k in blip)
    assert blip["r_mean"] == pytest.approx((blip["txt_r_mean"] + blip["img_r_mean"]) / 2)
    plain = full_metrics(*a)
    assert blip["txt_r1"] == plain["txt_r1"]  # keeping the top 4 cannot change R@1
    with pytest.raises(ValueError, match="full protocol only"):
        CMROptions(protocol="both", blip=True)


def test_product_index_validation():
    with pytest.raises(DataError, match="belongs to products"):
        ProductIndex.build([[0, 1], [1]])
    with pytest.raises(DataError, match="no product"):
        ProductIndex.build([[0], [2]], num_rows=3)
    with pytest.raises(DataError, match="no image rows"):
        ProductIndex.build([[0], []])


def small_options(**kw) -> SampledOptions:
    return SampledOptions(**{"set_len": 20, "neg_len": 10, **kw})


def test_sampled_sets_reproducible_files_and_positive_last(tmp_path):
    product_rows, row_sub = catalogue(45, {"shirts": 20, "jeans": 20, "hats": 3})  # + 2 "misc"
    files = []
    for name in ("a", "b"):
        provider = SampledSetProvider(small_options(), tmp_path / name)
        i2t, t2i = provider.get(product_rows, row_sub)
        files.append([(tmp_path / name / f"fashiongen_sampled_{d}.json").read_bytes() for d in ("i2t", "t2i")])
    assert files[0] == files[1]
    payload = json.loads(files[0][0])
    assert payload["options"]["neg_len"] == 10 and len(payload["queries"]) == 20
    product_of = {r: p for p, rows in enumerate(product_rows) for r in rows}
    assert len(i2t.queries) == len(t2i.queries) == 20
    for q, cands in zip(i2t.queries, i2t.candidates):
        assert len(cands) == 11 and cands[10] == product_of[q]
        assert product_of[q] not in cands[:10] and len(set(cands)) == 11
    for p, cands in zip(t2i.queries, t2i.candidates):
        assert len(cands) == 11 and product_of[cands[10]] == p
        negative_products = [product_of[r] for r in cands[:10]]
        assert p not in negative_products and len(set(negative_products)) == 10
    # reloading gives the same sets; a file drawn with other options is refused
    again = SampledSetProvider(small_options(), tmp_path / "a").get(product_rows, row_sub)
    assert again[0] == i2t and again[1] == t2i
    with pytest.raises(DataError, match="other data or options"):
        SampledSetProvider(small_options(neg_len=9), tmp_path / "a").get(product_rows, row_sub)
    with pytest.raises(DataError, match="other data or options"):
        SampledSetProvider(small_options(), tmp_path / "a").get(product_rows, row_sub[:-1] + ["hats"])
    assert load_sampled_set(tmp_path / "a" / "fashiongen_sampled_t2i.json", "t2i") == t2i


def test_top_up_from_other_subcategories_when_small():
    product_rows, row_sub = catalogue(45, {"shirts": 20, "jeans": 20, "hats": 3})
    sub_of_product = {p: row_sub[rows[0]] for p, rows in enumerate(product_rows)}
    options = SampledOptions(set_len=45, neg_len=10)
    i2t, t2i = draw_sampled_sets(product_rows, row_sub, random.Random(5), options)
    product_of = {r: p for p, rows in enumerate(product_rows) for r in rows}
    small = [(q, c) for q, c in zip(i2t.queries, i2t.candidates) if row_sub[q] == "hats"]
    assert len(small) == 3  # every product was queried
    for _, cands in small:  # only 2 other hats: the pool was topped up from other subcategories
        assert len(set(cands[:10])) == 10 and any(sub_of_product[p] != "hats" for p in cands[:10])
    big = [(q, c) for q, c in zip(i2t.queries, i2t.candidates) if row_sub[q] == "shirts"]
    assert all(sub_of_product[p] == "shirts" for _, c in big for p in c)  # no top-up needed
    for p, cands in zip(t2i.queries, t2i.candidates):
        if sub_of_product[p] == "hats":
            assert len({product_of[r] for r in cands[:10]}) == 10
    # the pool itself: the other products of the subcategory, then whole subcategories from the list's end
    pools = subcategory_pools(product_rows, row_sub)
    hat = pools["hats"][0]
    pool = _negative_pool(pools, "hats", hat, ["misc", "shirts", "jeans"], 10, clean=True)
    assert pool == [p for p in pools["hats"] if p != hat] + pools["jeans"]
    pool = _negative_pool(pools, "hats", hat, ["jeans", "misc"], 10, clean=True)
    assert pool == [p for p in pools["hats"] if p != hat] + pools["misc"] + pools["jeans"]


def test_t2i_defect_positive_in_pool_only_without_exclusion():
    # 3 "hats" products and 12 "jeans": a hats query tops up; popping "hats" itself re-adds the positive.
    product_rows, row_sub = catalogue(15, {"hats": 3, "jeans": 12})
    product_of = {r: p for p, rows in enumerate(product_rows) for r in rows}

    def positives_among_negatives(opts: SampledOptions) -> int:
        hits = 0
        for seed in range(10):
            _, t2i = draw_sampled_sets(product_rows, row_sub, random.Random(seed), opts)
            hits += sum(p in [product_of[r] for r in c[:-1]] for p, c in zip(t2i.queries, t2i.candidates))
        return hits

    assert positives_among_negatives(SampledOptions(set_len=15, neg_len=12, exclude_positive_from_t2i_pool=False)) > 0
    assert positives_among_negatives(SampledOptions(sets="legacy", pool_threshold=12, set_len=15, neg_len=12,
                                                    exclude_positive_from_t2i_pool=False)) > 0
    assert positives_among_negatives(SampledOptions(set_len=15, neg_len=12)) == 0


def test_neg_len_bound_and_legacy_threshold():
    product_rows, row_sub = catalogue(12)
    with pytest.raises(ValueError, match="neg_len"):
        draw_sampled_sets(product_rows, row_sub, random.Random(0), SampledOptions(neg_len=11))
    draw_sampled_sets(product_rows, row_sub, random.Random(0), SampledOptions(neg_len=10))
    with pytest.raises(DataError, match="threshold of 100"):  # published hard-coded pool size of 100
        draw_sampled_sets(product_rows, row_sub, random.Random(0), SampledOptions(sets="legacy", neg_len=10))
    with pytest.raises(ValueError, match="pool_threshold"):
        SampledOptions(neg_len=10, pool_threshold=5)


def test_legacy_mode_continues_the_global_generator():
    product_rows, row_sub = catalogue(110, {"shirts": 50, "jeans": 40})
    opts = SampledOptions(sets="legacy", set_len=20, neg_len=10, exclude_positive_from_t2i_pool=False)
    provider = SampledSetProvider(opts)  # seeds Python's global generator with 66 (start-up)
    first, second = provider.get(product_rows, row_sub), provider.get(product_rows, row_sub)
    replay = random.Random(66)
    assert first == draw_sampled_sets(product_rows, row_sub, replay, opts)
    assert second == draw_sampled_sets(product_rows, row_sub, replay, opts)
    assert first != second
    fixed = SampledSetProvider(SampledOptions(set_len=20, neg_len=10))
    assert fixed.get(product_rows, row_sub) == fixed.get(product_rows, row_sub)


def test_pools_follow_python_set_order_of_product_ids():
    product_rows = [[0], [1], [2, 3], [4]]
    row_sub = ["a", "b", "a", "a", "a"]
    ids = [1000, 7, 33, 8]
    pools = subcategory_pools(product_rows, row_sub, ids)
    expected = {1000, 33}
    expected.add(8)
    assert pools["a"] == [ids.index(i) for i in expected] and pools["b"] == [1]
    assert list(pools) == ["a", "b"]


def test_sampled_scoring_and_full_report(tmp_path):
    product_rows, row_sub = catalogue(45, {"shirts": 20, "jeans": 20, "hats": 3})
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (45, len(row_sub)), generator=g).float()  # ties: positive (last) loses them
    provider = SampledSetProvider(small_options(), tmp_path / "eval_sets")
    result = evaluate_cmr(product_rows, row_sub, scores=scores, sampled_sets=provider,
                          options=CMROptions(sampled=small_options()))
    assert set(result.metrics) == FULL_KEYS | TINY_KEYS
    i2t, t2i = provider.get(product_rows, row_sub)
    for sset, ranks in ((i2t, result.ranks["tiny_i2t"]), (t2i, result.ranks["tiny_t2i"])):
        for q, cands, rank in zip(sset.queries, sset.candidates, ranks.tolist()):
            row = [float(scores[c, q] if sset.direction == "i2t" else scores[q, c]) for c in cands]
            assert rank == sum(s >= row[-1] for s in row[:-1])  # stable sort, positive last
    text = torch.randn(45, 8, generator=g)
    image = torch.randn(len(row_sub), 8, generator=g)
    assert torch.equal(sampled_ranks(i2t, text_emb=text, image_emb=image),
                       sampled_ranks(i2t, scores=text @ image.T))
    table = format_cmr_table(result.metrics)
    assert table.splitlines()[0].split() == ["full", "R@1", "full", "R@5", "full", "R@10", "sampled", "R@1",
                                             "sampled", "R@5", "sampled", "R@10"]
    assert table.splitlines()[2].startswith("I2T") and table.splitlines()[3].startswith("T2I")
    path = write_cmr_report(tmp_path / "result.json", result, extra={"split": "test"})
    report = load_report(path, task="fashiongen_cmr", options=result.options)
    assert report["options"]["sampled"]["exclude_positive_from_t2i_pool"] is True
    assert report["options"]["sampled"]["pool_threshold"] == 10 and report["split"] == "test"
    other = evaluate_cmr(product_rows, row_sub, scores=scores, options=CMROptions(protocol="full"))
    with pytest.raises(ValueError, match="different protocol options"):
        load_report(path, options=other.options)

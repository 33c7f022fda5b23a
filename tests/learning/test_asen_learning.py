"""ASEN++ learns on the synthetic attribute data (CPU, about 2 minutes).

Measured on 2 CPU cores (stage 1: 3 epochs of 2000 triplets; stage 2: 1 epoch; data/training seeds 0-2):
random embeddings 35.9-36.1 % test MAP; stage 1 97.3-98.9 %; stage 2 98.6-100 %; the embedding conditioned on
attribute k ranks k's labels 35+ points better than the embedding conditioned on any other attribute.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

import asen_main
from datasets.asen import AsenImages, AsenLines, load_eval_split, read_split_lines, schema_from_config
from engine.config import load_config
from engine.distributed import init_distributed
from evaluation.map import attribute_map
from models.weights import load_weights
from tasks.asen import build_model
from tasks.asen_eval import embed_dataset
from tasks.asen_schema import AsenConfig
from tests.asen_helpers import ROOT, synthetic_asen, tiny_args


def random_embedding_map(data, draws: int = 50) -> float:
    """Mean test MAP of random unit embeddings (one per image) on the same queries and candidates."""
    q = read_split_lines(data / "query_test.txt", 60, (4, 3, 3))
    c = read_split_lines(data / "candidate_test.txt", 60, (4, 3, 3))
    t = torch.as_tensor
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(draws):
        e = torch.nn.functional.normalize(torch.randn(60, 64, generator=g), dim=1)
        total += attribute_map(e[t(q.fid)], t(q.attr), t(q.value), e[t(c.fid)], t(c.attr), t(c.value), 3).total
    return total / draws


def attribute_specificity(data, checkpoint) -> list[list[float]]:
    """m[k][j]: test MAP on attribute k's labels when every line is embedded conditioned on attribute j."""
    cfg = load_config(AsenConfig, [data / "synthetic.yaml", ROOT / "configs/asen/synthetic/s1.yaml"],
                      [f"DATA.BASE_PATH={data.parent}", f"DATA.DATASET={data.name}"])
    schema = schema_from_config(cfg.DATA)
    model = build_model(cfg, schema.num_attributes)
    load_weights(model, checkpoint, family="asen", strict=True)
    split = load_eval_split(cfg.DATA, "test", schema)
    images = AsenImages(split.root, split.images, split.list_path, cfg.INPUT.GLOBAL_SIZE, cfg.INPUT.PIXEL_MEAN,
                        cfg.INPUT.PIXEL_STD, keep_original=False)
    q, c, info = split.queries, split.candidates, init_distributed("cpu")
    out = []
    for k in range(schema.num_attributes):
        qm, cm = q.attr == k, c.attr == k
        fids, n = q.fid[qm].tolist() + c.fid[cm].tolist(), int(qm.sum())
        row = []
        for j in range(schema.num_attributes):
            emb = embed_dataset(model, AsenLines(images, fids, [j] * len(fids)), cfg, info, "fp32",
                                progress_bar=False)["fused"]
            zeros = torch.zeros(len(fids), dtype=torch.long)
            res = attribute_map(emb[:n], zeros[:n], torch.as_tensor(q.value[qm]), emb[n:], zeros[n:],
                                torch.as_tensor(c.value[cm]), 1)
            row.append(res.total)
        out.append(row)
    return out


@pytest.mark.slow
def test_two_stages_learn_attribute_specific_similarity(tmp_path_factory, tmp_path):
    data = synthetic_asen(tmp_path_factory)
    start = time.perf_counter()
    assert asen_main.main(tiny_args(data, 1, tmp_path)) == 0
    stage1 = tmp_path / "synthetic_s1" / "checkpoint.pth.tar"
    assert asen_main.main([*tiny_args(data, 2, tmp_path), "--resume", str(stage1)]) == 0
    train_seconds = time.perf_counter() - start
    maps = {}
    for stage, ckpt in ((1, stage1), (2, tmp_path / "synthetic_s2" / "checkpoint.pth.tar")):
        out = tmp_path / f"test_s{stage}.json"
        assert asen_main.main([*tiny_args(data, stage, tmp_path), "--resume", str(ckpt), "--test", "TEST",
                               "--out", str(out)]) == 0
        maps[stage] = json.loads(out.read_text())["metrics"]["map"] / 100
    chance = random_embedding_map(data)
    specificity = attribute_specificity(data, stage1)
    print(f"\nASEN++ learning: random {chance:.4f}  stage 1 {maps[1]:.4f}  stage 2 {maps[2]:.4f}  "
          f"({train_seconds:.0f} s training)  specificity {[[round(v, 3) for v in r] for r in specificity]}")
    assert 0.3 < chance < 0.42
    assert maps[1] >= 2 * chance and maps[1] >= 0.85  # measured 0.97-0.99
    assert maps[2] >= maps[1] - 0.01  # stage 2 does not lower it (measured +0.7 to +2.7 points)
    for k, row in enumerate(specificity):
        assert row[k] >= max(v for j, v in enumerate(row) if j != k) + 0.2  # measured gaps >= 0.35

"""Golden parity of ASEN++ with the published code: embeddings, attention maps and the fused evaluation
embedding (eval mode), the train-mode forward with its BatchNorm buffer updates, and the published mean
average precision on a case without score ties.

The model is built from the published FashionAI + s2 configs with the fixture's overrides, loaded strictly
from the published state dict (attribute table stored under both branches) with the project's loader.
The local branch is fed the fixture's local images directly (no attention-guided crop in this fixture).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from engine.config import load_config
from evaluation.map import attribute_map
from models.asen import ASENet
from tasks.asen import build_model
from tasks.asen_schema import AsenConfig
from tests.parity_helpers import (
    EMB_ABS,
    MEASURED,
    ROOT,
    Recorder,
    abs_dev,
    check,
    check_exact,
    check_state_after,
    load_fixture,
    load_strict,
    one_thread,
    print_measured,
)

FILE = "asen_tiny.pt"
ATTN_ABS, BN_ABS, MAP_ABS = 1e-6, 1e-6, 1e-9


def config(data: dict[str, Any], extra: tuple[str, ...] = ()) -> AsenConfig:
    """The published base configs (the project's copies) with the fixture's overrides."""
    files = [ROOT / "configs/asen" / path.removeprefix("config/") for path in data["config"]["base_configs"]]
    sets = [f"{key}={value}" for key, value in data["config"]["overrides"].items()]
    return load_config(AsenConfig, files, [*sets, *extra])


def loaded_model(data: dict[str, Any], extra: tuple[str, ...] = ()) -> ASENet:
    cfg = config(data, extra)
    torch.manual_seed(0)
    model = build_model(cfg, cfg.DATA.NUM_ATTRIBUTES)
    report = load_strict(model, data["state_dict"], "asen")
    assert report.loaded == len(data["state_dict"]) - 1  # the published file stores the attribute table twice
    return model


def evaluate(model: ASENet, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Eval-mode `encode` with the local views replaced by the fixture's local images; raw branch outputs
    recorded at the branches."""
    model.eval()
    with Recorder() as rec, torch.no_grad():
        rec.hook(model.choices["global"], "global")
        rec.hook(model.choices["local"], "local")
        model.local_views = lambda attn, batch: (inputs["xl"], torch.zeros(attn.shape[0], 3))
        try:
            out = model.encode({"image": inputs["xg"], "attr": inputs["attr"]}, with_parts=True)
        finally:
            del model.local_views
    (g, g_attn), (loc, l_attn) = rec.out("global"), rec.out("local")
    return {"global_emb": g, "global_attn": g_attn, "local_emb": loc, "local_attn": l_attn, "fused": out["fused"]}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    return load_fixture(FILE)


@pytest.fixture(scope="module")
def model(data):
    yield loaded_model(data)
    print_measured("asen")


def check_outputs(group: str, ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    for name in ("global_emb", "local_emb", "fused", "global_attn", "local_attn"):
        if name in ref:
            tol = ATTN_ABS if name.endswith("_attn") else EMB_ABS
            check(f"asen {group} {'attention' if name.endswith('_attn') else 'embeddings'}", name, ours[name],
                  ref[name], abs_=tol)


def test_eval_embeddings_attention_and_fused(model, data):
    with one_thread():
        ours = evaluate(model, data["inputs"])
    check_outputs("eval", ours, data["outputs"])
    beta = config(data).SOLVER.BETA
    assert beta == 0.6 and ours["fused"].shape == (4, 512)
    for name in ("global_attn", "local_attn"):  # each map sums to one over its locations
        assert torch.allclose(ours[name].flatten(1).sum(1), torch.ones(4), atol=1e-6)
    assert math.isclose(float(ours["fused"][:, :256].norm(dim=1)[0]) ** 2, beta, rel_tol=1e-5)


def test_train_forward_and_batchnorm_buffers(data):
    """Train mode: one call per branch on all four images, BatchNorm batch statistics and running buffers."""
    inputs, ref = data["inputs"], data["outputs_train"]
    with one_thread():
        model = loaded_model(data)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        with torch.no_grad():
            g, g_attn = model.embed(inputs["xg"], inputs["attr"], "global")
            loc, l_attn = model.embed(inputs["xl"], inputs["attr"], "local")
        after = model.state_dict()
    check_outputs("train", {"global_emb": g, "global_attn": g_attn, "local_emb": loc, "local_attn": l_attn}, ref)
    buffers = ref["bn_buffers_after_train"]
    assert len(buffers) == 90
    check_state_after("asen bn_buffers", before, after, buffers)
    for key, value in buffers.items():
        if key.endswith("num_batches_tracked"):
            check_exact("asen bn_buffers", key, after[key], value)


def test_mean_average_precision(data):
    """Per query, per attribute and query-weighted total through evaluation/map.py (abs 1e-9)."""
    case = data["map_case"]
    with one_thread():
        result = attribute_map(case["q"], case["q_attr"], case["q_values"], case["c"], case["c_attr"],
                               case["c_values"], len(case["map_per_attribute"]))
    check("asen map", "ap_per_query", result.ap, case["ap_per_query"], abs_=MAP_ABS)
    check("asen map", "per_attribute", torch.tensor(result.per_attribute, dtype=torch.float64),
          torch.tensor(case["map_per_attribute"], dtype=torch.float64), abs_=MAP_ABS)
    check("asen map", "total", torch.tensor(result.total), torch.tensor(case["map_total"]), abs_=MAP_ABS)
    assert (result.ap[case["q_attr"] == 2][case["q_values"][case["q_attr"] == 2] == 4] == 0).all()


def test_changed_settings_move_the_outputs_past_the_tolerance(data):
    """A different fusion weight moves `fused`; BatchNorm batch statistics instead of the running ones move
    the embeddings: both by far more than the tolerance."""
    inputs, ref = data["inputs"], data["outputs"]
    with one_thread():
        other = evaluate(loaded_model(data, ("SOLVER.BETA=0.5",)), inputs)
        model = loaded_model(data).train()
        with torch.no_grad():
            g, _ = model.embed(inputs["xg"], inputs["attr"], "global")
    beta_dev, bn_dev = abs_dev(other["fused"], ref["fused"]), abs_dev(g, ref["global_emb"])
    MEASURED["asen sensitivity SOLVER.BETA=0.5 fused"] = beta_dev
    MEASURED["asen sensitivity train-mode BN global_emb"] = bn_dev
    assert beta_dev > 100 * EMB_ABS and bn_dev > 100 * EMB_ABS, (beta_dev, bn_dev)

"""Golden parity of the Fashion-FINE models (pretraining, CMR retrieval, TGIR) with the published code.

Each fixture holds a tiny published model's weights, its inputs and what the published code returned. The
model is built here at the fixture's sizes in compat mode from the project's configs, the weights are loaded
strictly with the project's loader, and one train-mode forward (seed 0, one thread) plus `sum(losses)
.backward()` must reproduce the losses, intermediate features, gradients and the changed state (momentum
weights, queues, pointers); the evaluation embeddings must match too. A single compat switch set to its
fixed behaviour must move an output past the tolerances (the tests can fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import models.fine_dual_encoder as dual_encoder
import models.fine_tgir as fine_tgir
import models.losses as losses_module
from engine.config import load_config
from models.fine_pretrain import FinePretrainModel
from models.fine_retrieval import FineRetrievalModel
from models.fine_tgir import FineTGIRModel
from tasks.fine_schema import PretrainConfig, RetrievalConfig, TGIRConfig
from tests.parity_helpers import (
    EMB_ABS,
    FEAT_SCALED,
    LOSS_REL,
    MEASURED,
    ROOT,
    Recorder,
    abs_dev,
    check,
    check_exact,
    check_grads,
    check_losses,
    check_state_after,
    load_fixture,
    load_strict,
    momentum,
    one_thread,
    online,
    print_measured,
    rel_dev,
)

FILES = {"pretrain": "fine_pretrain_tiny.pt", "retrieval": "fine_retrieval_tiny.pt", "tgir": "fine_tgir_tiny.pt"}
SETUP = {"pretrain": (PretrainConfig, "configs/pretrain.yaml", FinePretrainModel),
         "retrieval": (RetrievalConfig, "configs/retrieval.yaml", FineRetrievalModel),
         "tgir": (TGIRConfig, "configs/tgir.yaml", FineTGIRModel)}
# published loss name -> ours
LOSS_NAMES = {"pretrain": {"ita": "itc", "itm": "itm", "symbol": "symbol", "mlm": "mlm", "replace": "rtd"},
              "retrieval": {"itc": "itc", "itm": "itm"}, "tgir": {"itc": "itc"}}
SEP_TOKEN_ID = 102
KINDS = tuple(FILES)


def size_overrides(config: dict[str, Any]) -> list[str]:
    """`--set` overrides for the fixture's sizes (its `config` entry), in compat mode."""
    v, b, m = config["vision"], config["bert"], config["model_config"]
    return ["compat.mode=compat",
            f"model.vision.image_res={v['image_res']}", f"model.vision.patch_size={v['patch_size']}",
            f"model.vision.width={v['width']}", f"model.vision.depth={v['depth']}", f"model.vision.heads={v['heads']}",
            f"model.vision.mlp_ratio={v['mlp_ratio']}",
            f"model.text.hidden={b['hidden_size']}", f"model.text.layers={b['num_hidden_layers']}",
            f"model.text.heads={b['num_attention_heads']}", f"model.text.intermediate={b['intermediate_size']}",
            f"model.text.fusion_layer={b['fusion_layer']}", f"model.text.dropout={b['hidden_dropout_prob']}",
            f"model.text.max_positions={b['max_position_embeddings']}",
            f"model.embed_dim={m['embed_dim']}", f"model.queue_size={m['queue_size']}",
            f"model.momentum={m['momentum']}", f"loss.distill_alpha={config['alpha']}"]


def build(kind: str, fixture: dict[str, Any], overrides: tuple[str, ...] = ()) -> torch.nn.Module:
    schema, path, cls = SETUP[kind]
    cfg = load_config(schema, [ROOT / path], [*size_overrides(fixture["config"]), *overrides])
    torch.manual_seed(0)
    return cls(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=fixture["config"]["bert"]["vocab_size"],
               sep_token_id=SEP_TOKEN_ID)


def batch(kind: str, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The published inputs under the reimplementation's batch names."""
    text = {"input_ids": inputs["text_input_ids"], "attention_mask": inputs["text_attention_mask"]}
    if kind == "tgir":  # the ids are unused in compat mode (diagonal targets); any distinct values
        return {**text, "ref_image": inputs["ref_image"], "target_image": inputs["tar_image"],
                "ref_id": torch.tensor([0, 1]), "target_id": torch.tensor([2, 3])}
    out = {**text, "image": inputs["image"], "product_idx": inputs["idx"]}
    if kind == "pretrain":
        out |= {"mlm_labels": inputs["mask_labels"], "rtd_labels": inputs["replace_labels"]}
    return out


def instrument(rec: Recorder, model: torch.nn.Module, kind: str) -> None:
    rec.hook(model.visual_encoder, "vit")
    rec.wrap(model.text_encoder, "text")
    rec.wrap(model, "project_image")
    rec.wrap(model, "project_text")
    if kind == "tgir":
        rec.wrap(model.text_encoder, "fusion")
        rec.wrap(model.text_encoder_m, "fusion", "fusion_m")
        rec.wrap(model, "query_feature")
        rec.wrap(model, "_momentum_query")
        rec.wrap(fine_tgir, "focal_soft_cross_entropy")
        return
    for method in ("image_feature", "text_feature", "momentum_features", "contrastive_loss", "matching_logits"):
        rec.wrap(model, method)
    for fn in ("positive_targets", "diagonal_targets", "distilled_targets", "sample_hard_negatives"):
        rec.wrap(dual_encoder, fn)
    rec.wrap(losses_module, "hard_negative_weights")
    rec.hook(model.itm_head, "itm_head")
    if kind == "pretrain":
        rec.wrap(model, "symbol_feature")
        rec.hook(model.decoder_layer, "mlm_head")
        rec.hook(model.replace_predict_layer, "rtd_head")


def features(rec: Recorder, kind: str) -> dict[str, torch.Tensor]:
    """Our values of the published `features` entries, from the recorded calls."""
    img_online, txt_online = rec.outs("project_image", online), rec.outs("project_text", online)
    if kind == "tgir":
        tokens, img_m = rec.out("vit"), rec.outs("project_image", momentum)
        return {"ref_image_embeds": tokens[:2], "tar_image_embeds": tokens[2:], "text_embeds": rec.out("text"),
                "fusion_out": rec.out("fusion"), "fusion_feat": rec.out("query_feature"),
                "tar_image_feat": img_online[0], "ref_image_feat_m": img_m[0], "tar_image_feat_m": img_m[1],
                "fusion_output_m": rec.out("fusion_m"), "fusion_feat_m": rec.out("_momentum_query"),
                "sim_f2i": rec.arg("focal_soft_cross_entropy", 0, 0),
                "sim_f2i_targets": rec.arg("focal_soft_cross_entropy", 0, 1),
                "loss_f2i": rec.out("focal_soft_cross_entropy", 0),
                "sim_i2f": rec.arg("focal_soft_cross_entropy", 1, 0),
                "sim_i2f_targets": rec.arg("focal_soft_cross_entropy", 1, 1),
                "loss_i2f": rec.out("focal_soft_cross_entropy", 1)}
    _, sim_i2t, sim_t2i = rec.out("contrastive_loss")
    out = {"image_embeds": rec.out("vit"), "text_embeds": rec.out("text"), "image_feat": rec.out("image_feature"),
           "text_feat": rec.out("text_feature"), "img_word_sum": img_online[1], "text_word_sum": txt_online[1],
           "image_feat_m": rec.out("momentum_features")[0], "text_feat_m": rec.out("momentum_features")[1],
           "sim_i2t": sim_i2t, "sim_t2i": sim_t2i,
           "sim_targets": rec.out("positive_targets" if kind == "pretrain" else "diagonal_targets"),
           "sim_i2t_targets": rec.out("distilled_targets", 0), "sim_t2i_targets": rec.out("distilled_targets", 1),
           # first draw: a negative image per text (t2i weights), then a negative text per image
           "weights_t2i": rec.out("hard_negative_weights", 0), "weights_i2t": rec.out("hard_negative_weights", 1),
           "output_pos": rec.out("matching_logits")[0], "vl_output": torch.cat(rec.outs("itm_head"))}
    if kind == "pretrain":
        out |= {"sign_feat": txt_online[2], "phrase_sum": txt_online[3], "symbol_feature": rec.out("symbol_feature"),
                "mask_logit": rec.out("mlm_head"), "replace_logit": rec.out("rtd_head")}
    return out


def evaluation(kind: str, model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Eval-mode, no-grad ranking embeddings (the published evaluation's)."""
    model.eval()
    if kind == "retrieval":
        img = model.encode_image(inputs["eval_images"])
        txt = model.encode_text(inputs["eval_text_input_ids"], inputs["eval_text_attention_mask"], has_sign=False)
        return {"img_emb": img, "txt_emb": txt, "sim_t2i": txt @ img.T}
    if kind == "tgir":
        return {"q_emb": model.encode_query(inputs["text_input_ids"], inputs["text_attention_mask"],
                                            inputs["ref_image"]),
                "tar_emb": model.encode_image(inputs["tar_image"]), "ref_emb": model.encode_image(inputs["ref_image"])}
    return {}


@dataclass
class Run:
    losses: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    drawn: list[torch.Tensor]
    grads: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)


def run(kind: str, fixture: dict[str, Any], overrides: tuple[str, ...] = ()) -> Run:
    """Build, load strictly, evaluate, then one train-mode forward (seed 0) and `sum(losses).backward()`."""
    with one_thread():
        model = build(kind, fixture, overrides)
        load_strict(model, fixture["state_dict"], "fine")
        inputs = fixture["inputs"]
        with torch.no_grad():
            embeddings = evaluation(kind, model, inputs)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        with Recorder() as rec:
            instrument(rec, model, kind)
            torch.manual_seed(0)
            losses = model(batch(kind, inputs))
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        after = {k: v.clone() for k, v in model.state_dict().items()}
    drawn = rec.outs("sample_hard_negatives")
    return Run({k: v.detach() for k, v in losses.items()}, features(rec, kind), drawn, grads, before, after,
               embeddings)


@pytest.fixture(scope="module")
def fixtures() -> dict[str, dict[str, Any]]:
    return {}


def get_fixture(fixtures: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    """Each .pt file loaded once per module."""
    if kind not in fixtures:
        fixtures[kind] = load_fixture(FILES[kind])
    return fixtures[kind]


@pytest.fixture(scope="module")
def runs(fixtures):
    cache: dict[str, Run] = {}

    def get(kind: str) -> tuple[Run, dict[str, Any]]:
        fixture = get_fixture(fixtures, kind)
        if kind not in cache:
            cache[kind] = run(kind, fixture)
        return cache[kind], fixture

    yield get
    print_measured("pretrain", "retrieval", "tgir")


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("kind", KINDS)
def test_losses(runs, kind):
    result, fixture = runs(kind)
    ref = fixture["outputs"]["losses"]
    check_losses(f"{kind} losses", result.losses, ref, LOSS_NAMES[kind])
    for name, value in fixture["outputs"]["loss_floats"].items():
        assert float(ref[name]) == pytest.approx(value, rel=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_features(runs, kind):
    """The forward's intermediates against the published `features` (abs 1e-5 x max(1, max|ref|))."""
    result, fixture = runs(kind)
    ref = fixture["outputs"]["features"]
    ours = result.features  # may hold more than the fixture stored (retrieval: no sampling weights)
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"reference features not compared: {missing}"
    inputs = fixture["inputs"]
    for name, value in ref.items():
        if name.startswith("weights_"):  # ours are normalised sampling weights; multinomial ignores the scale
            value = value / value.sum(dim=1, keepdim=True)
        if name == "mask_logit":  # our head runs on the labelled positions only
            value = value[inputs["mask_labels"] != -100]
        if name == "replace_logit":
            value = value[inputs["replace_labels"] != -100]
        check(f"{kind} features", name, ours[name], value, scaled=FEAT_SCALED)
    if kind != "tgir":  # B = 2: the negative of sample b is always sample 1 - b (text side, then image side)
        assert [d.tolist() for d in result.drawn] == [[1, 0], [1, 0]]


@pytest.mark.parametrize("kind", KINDS)
def test_gradients(runs, kind):
    result, fixture = runs(kind)
    check_grads(f"{kind} grads", result.grads, fixture["outputs"]["grads"])


@pytest.mark.parametrize("kind", KINDS)
def test_state_after_forward(runs, kind):
    """Momentum EMA, queues (batch momentum features written at the pointer), pointers and the id queue."""
    result, fixture = runs(kind)
    check_state_after(f"{kind} state_after", result.before, result.after, fixture["outputs"]["state_after"])


@pytest.mark.parametrize("kind", ["retrieval", "tgir"])
def test_evaluation_embeddings(runs, kind):
    result, fixture = runs(kind)
    for name, value in result.embeddings.items():
        check(f"{kind} embeddings", name, value, fixture["outputs"][name], abs_=EMB_ABS)


SENSITIVITY = [("pretrain", "compat.local_pool_mask=fixed", "itc"),
               ("retrieval", "compat.text_layout=fixed", "txt_emb"),
               ("tgir", "compat.tgir_momentum_proj=fixed", "itc")]


@pytest.mark.parametrize(("kind", "switch", "output"), SENSITIVITY)
def test_one_fixed_switch_moves_an_output_past_the_tolerance(fixtures, kind, switch, output):
    fixture = get_fixture(fixtures, kind)
    result = run(kind, fixture, (switch,))
    if output in result.embeddings:
        dev, tol = abs_dev(result.embeddings[output], fixture["outputs"][output]), EMB_ABS
    else:
        published = {v: k for k, v in LOSS_NAMES[kind].items()}[output]
        dev, tol = rel_dev(result.losses[output], fixture["outputs"]["losses"][published]), LOSS_REL
    MEASURED[f"{kind} sensitivity {switch} {output}"] = dev
    assert dev > 100 * tol, f"{switch}: {output} moved only {dev:.3g} (tolerance {tol:g})"


def test_fixture_inputs_are_the_documented_layout(fixtures):
    """Guards the input mapping: special ids and shapes as the fixtures' documentation states."""
    inputs = get_fixture(fixtures, "pretrain")["inputs"]
    ids = inputs["text_input_ids"]
    assert ids[:, 0].tolist() == [101, 101] and ids[0, 10] == SEP_TOKEN_ID
    check_exact("pretrain inputs", "mask positions", (ids == 103).nonzero(), torch.tensor([[0, 4], [0, 12], [1, 3]]))

"""Golden parity of Fashion-FINE on BLIP (both training stages) with the published code.

The fixture holds the tiny published stage-1 and stage-2 models, their inputs and outputs, and a batch-4 case
whose hard negatives depend on the seed. The model is built at the fixture's sizes in compat mode from the
project's BLIP configs and loaded strictly with the project's loader; the train-mode forward (seed 0, one
thread) and its backward must reproduce losses, intermediates, multinomial draws, gradients and the changed
state; the evaluation must reproduce the embeddings, every pair's matching logits and the recall. The
project's tokenizer set-up must reproduce the published token ids from the raw captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

import models.fine_blip as fine_blip
import models.fine_dual_encoder as dual_encoder
import models.fine_local as fine_local
import models.losses as losses_module
from datasets.fashiongen_blip import BlipCaptions, load_blip_tokenizer
from engine.config import load_config
from evaluation.cmr import CMROptions, evaluate_cmr
from models.fine_blip import FineBlipRetrieval
from tasks.blip_schema import BlipRetrievalConfig
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
    one_thread,
    online,
    print_measured,
    rel_dev,
)

FILE = "fine_blip_tiny.pt"
SEP_TOKEN_ID, ENC_TOKEN_ID = 102, 999
STAGES = (1, 2)


def overrides(config: dict[str, Any]) -> list[str]:
    """`--set` overrides for the fixture's sizes (its `config` entry), in compat mode."""
    v, t, m = config["vision"], config["med"], config["model_kwargs"]
    return ["compat.mode=compat",
            f"model.vision.image_res={v['image_res']}", f"model.vision.patch_size={v['patch_size']}",
            f"model.vision.width={v['width']}", f"model.vision.depth={v['depth']}", f"model.vision.heads={v['heads']}",
            f"model.vision.mlp_ratio={v['mlp_ratio']}", f"model.vision.grad_ckpt_layers={v['ckpt_layer']}",
            f"model.text.hidden={t['hidden_size']}", f"model.text.layers={t['num_hidden_layers']}",
            f"model.text.heads={t['num_attention_heads']}", f"model.text.intermediate={t['intermediate_size']}",
            f"model.text.dropout={t['hidden_dropout_prob']}", f"model.text.max_positions={t['max_position_embeddings']}",
            f"model.embed_dim={m['embed_dim']}", f"model.queue_size={m['queue_size']}", f"model.momentum={m['momentum']}",
            f"model.negative_all_rank={str(m['negative_all_rank']).lower()}", f"loss.distill_alpha={config['alpha']}",
            f"data.max_length={config['max_length']}", f"eval.k_test={config['k_test']}"]


def build(stage: int, config: dict[str, Any], extra: tuple[str, ...] = ()) -> tuple[FineBlipRetrieval, Any]:
    cfg = load_config(BlipRetrievalConfig, [ROOT / f"configs/blip/retrieval_fashionfine_{stage}.yaml"],
                      [*overrides(config), *extra])
    torch.manual_seed(0)
    model = FineBlipRetrieval(cfg.model, cfg.loss, cfg.compat.model_behaviour(), vocab_size=config["med"]["vocab_size"],
                              sep_token_id=SEP_TOKEN_ID, enc_token_id=ENC_TOKEN_ID)
    return model, cfg


def batch(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {"image": inputs["image"], "input_ids": inputs["text_input_ids"],
            "attention_mask": inputs["text_attention_mask"], "product_idx": inputs["idx"]}


def instrument(rec: Recorder, model: FineBlipRetrieval, stage: int) -> None:
    rec.hook(model.visual_encoder, "vit")
    rec.hook(model.itm_head, "itm_head")
    rec.wrap(model.text_encoder, "text")
    rec.wrap(model.text_encoder, "multimodal")
    for method in ("project_image", "project_text", "image_feature", "text_feature", "momentum_features",
                   "contrastive_loss"):
        rec.wrap(model, method)
    for fn in ("positive_targets", "distilled_targets", "focal_soft_cross_entropy"):
        rec.wrap(dual_encoder, fn)
    rec.wrap(fine_blip, "sample_hard_negatives")
    rec.wrap(losses_module, "hard_negative_weights")
    if stage == 1:
        rec.wrap(model, "symbol_feature")
        rec.wrap(fine_local, "ngram_features")


def features(rec: Recorder, stage: int) -> dict[str, torch.Tensor]:
    """Our values of the published `features` entries, from the recorded calls."""
    img_online, txt_online = rec.outs("project_image", online), rec.outs("project_text", online)
    _, sim_i2t, sim_t2i = rec.out("contrastive_loss")
    out = {"image_embeds": rec.out("vit"), "text_embeds": rec.out("text"), "image_feat": rec.out("image_feature"),
           "text_feat": rec.out("text_feature"), "img_word_sum": img_online[1], "text_word_sum": txt_online[1],
           "image_feat_m": rec.out("momentum_features")[0], "text_feat_m": rec.out("momentum_features")[1],
           "itc_sim_i2t": sim_i2t, "itc_sim_t2i": sim_t2i,
           "sim_i2t_m": rec.arg("distilled_targets", 0, 0), "sim_t2i_m": rec.arg("distilled_targets", 1, 0),
           "sim_targets": rec.out("positive_targets"),
           "sim_i2t_targets": rec.out("distilled_targets", 0), "sim_t2i_targets": rec.out("distilled_targets", 1),
           "loss_i2t": rec.out("focal_soft_cross_entropy", 0), "loss_t2i": rec.out("focal_soft_cross_entropy", 1),
           # first draw: a negative image per text, then a negative text per image
           "itm_sim_t2i": rec.arg("sample_hard_negatives", 0, 0), "itm_sim_i2t": rec.arg("sample_hard_negatives", 1, 0),
           "idxs": rec.arg("positive_targets", 0, 0).view(-1, 1), "mask": rec.arg("sample_hard_negatives", 0, 1),
           "weights_t2i": rec.out("hard_negative_weights", 0), "weights_i2t": rec.out("hard_negative_weights", 1),
           "encoder_input_ids": rec.arg("multimodal", 0, 0), "output_pos": rec.out("multimodal", 0),
           "text_ids_all": rec.arg("multimodal", 1, 0), "text_atts_all": rec.arg("multimodal", 1, 1),
           "output_neg": rec.out("multimodal", 1), "vl_output": torch.cat(rec.outs("itm_head"))}
    if stage == 1:
        out |= {"sign_feat": txt_online[2], "phrase_sum": txt_online[3], "phrase": rec.out("ngram_features"),
                "symbol_feature": rec.out("symbol_feature")}
    return out


@torch.no_grad()
def evaluation(model: FineBlipRetrieval, stage: int, inputs: dict[str, Any], k_test: int) -> dict[str, Any]:
    """The published evaluation (eval mode, no grad): embeddings, similarities, recall; and the matching
    logits of every (text, image) pair ([ENC] at position 0, multimodal pass over the eval-mode ViT tokens)."""
    model.eval()
    images, ids, mask = inputs["eval_images"], inputs["eval_text_input_ids"], inputs["eval_text_attention_mask"]
    img = model.encode_image(images)
    txt = model.encode_text(ids, mask, has_sign=stage == 1)
    recall = evaluate_cmr(inputs["eval_txt2img"], options=CMROptions(protocol="full", blip=True, k_test=k_test),
                          text_emb=txt, image_emb=img).metrics
    tokens = model.visual_encoder(images)
    n_txt, n_img = ids.shape[0], images.shape[0]
    enc_ids = ids.clone()
    enc_ids[:, 0] = ENC_TOKEN_ID
    states = model.text_encoder.multimodal(enc_ids.repeat_interleave(n_img, 0), mask.repeat_interleave(n_img, 0),
                                           tokens.repeat(n_txt, 1, 1))
    itm = model.itm_head(states[:, 0]).view(n_txt, n_img, 2)
    return {"img_emb": img, "txt_emb": txt, "sim_t2i": txt @ img.T, "recall": recall, "itm_logits": itm}


@dataclass
class Run:
    losses: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    drawn: torch.Tensor
    grads: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    evaluation: dict[str, Any]


def run(stage: int, data: dict[str, Any], extra: tuple[str, ...] = ()) -> Run:
    """Build, load strictly, evaluate, then one train-mode forward (seed 0) and `sum(losses).backward()`."""
    entry, config = data[f"stage{stage}"], data["config"]
    with one_thread():
        model, cfg = build(stage, config, extra)
        load_strict(model, entry["state_dict"], "blip")
        evaluated = evaluation(model, stage, entry["inputs"], cfg.eval.k_test)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        with Recorder() as rec:
            instrument(rec, model, stage)
            torch.manual_seed(0)
            losses = model(batch(entry["inputs"]))
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        after = {k: v.clone() for k, v in model.state_dict().items()}
    return Run({k: v.detach() for k, v in losses.items()}, features(rec, stage),
               torch.cat(rec.outs("sample_hard_negatives")), grads, before, after, evaluated)


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    return load_fixture(FILE)


@pytest.fixture(scope="module")
def runs(data):
    cache: dict[int, Run] = {}

    def get(stage: int) -> Run:
        if stage not in cache:
            cache[stage] = run(stage, data)
        return cache[stage]

    yield get
    print_measured("blip")


def normalised(weights: torch.Tensor) -> torch.Tensor:
    """The published sampling weights are softmax rows with the excluded entries zeroed, not renormalised;
    ours are renormalised. torch.multinomial ignores the scale, so rows are compared normalised."""
    return weights / weights.sum(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("stage", STAGES)
def test_losses(runs, data, stage):
    ref = data[f"stage{stage}"]["outputs"]
    check_losses(f"blip{stage} losses", runs(stage).losses, ref["losses"])
    assert list(ref["losses"]) == list(fine_blip.loss_names(stage))


@pytest.mark.parametrize("stage", STAGES)
def test_features_and_draws(runs, data, stage):
    result, ref = runs(stage), data[f"stage{stage}"]["outputs"]
    missing = sorted(set(ref["features"]) - set(result.features))
    assert not missing, f"reference features not compared: {missing}"
    for name, value in ref["features"].items():
        ours = result.features[name]
        if not value.is_floating_point():
            check_exact(f"blip{stage} features", name, ours, value)
            continue
        if name.startswith("weights_"):
            value = normalised(value)
        check(f"blip{stage} features", name, ours, value, scaled=FEAT_SCALED)
    calls = ref["multinomial"]  # one published call per row: texts 0-1 (negative images), then images 0-1
    check_exact(f"blip{stage} drawn", "multinomial", result.drawn, torch.cat([c["drawn"] for c in calls]))
    rows = torch.cat([result.features["weights_t2i"], result.features["weights_i2t"]])
    for i, call in enumerate(calls):
        check(f"blip{stage} features", f"multinomial weights {i}", rows[i], normalised(call["weights"]),
              scaled=FEAT_SCALED)


@pytest.mark.parametrize("stage", STAGES)
def test_gradients(runs, data, stage):
    check_grads(f"blip{stage} grads", runs(stage).grads, data[f"stage{stage}"]["outputs"]["grads"])


@pytest.mark.parametrize("stage", STAGES)
def test_state_after_forward(runs, data, stage):
    result = runs(stage)
    check_state_after(f"blip{stage} state_after", result.before, result.after,
                      data[f"stage{stage}"]["outputs"]["state_after"])


@pytest.mark.parametrize("stage", STAGES)
def test_evaluation(runs, data, stage):
    """Embeddings and similarities abs 1e-5, matching logits abs 1e-5 x max(1, max|ref|), recall exact."""
    result, ref = runs(stage), data[f"stage{stage}"]["outputs"]
    for name in ("img_emb", "txt_emb", "sim_t2i"):
        check(f"blip{stage} embeddings", name, result.evaluation[name], ref[name], abs_=EMB_ABS)
    check(f"blip{stage} itm_logits", "itm_logits", result.evaluation["itm_logits"], ref["itm_logits"],
          scaled=FEAT_SCALED)
    recall = result.evaluation["recall"]
    assert {k: recall[k] for k in ref["recall"]} == ref["recall"]


def test_sampling_batch4_draws_and_losses(data):
    """Stage-2 weights, batch 4 with 2-3 candidates per row: both seeds give the published negatives and losses."""
    case, config = data["sampling_b4"], data["config"]
    state = {**data["stage2"]["state_dict"], **case["state_changes"]}
    inputs = case["inputs"]
    with one_thread():
        model, _ = build(2, config)
        for seed, ref in ((0, case["outputs"]["seed_0"]), (12345, case["outputs"]["seed_12345"])):
            load_strict(model, state, "blip")
            model.train()
            with Recorder() as rec, torch.no_grad():
                rec.wrap(fine_blip, "sample_hard_negatives")
                rec.wrap(losses_module, "hard_negative_weights")
                torch.manual_seed(seed)
                losses = model(batch(inputs))
            group = f"blip sampling_b4 seed {seed}"
            check_exact(group, "drawn", torch.cat(rec.outs("sample_hard_negatives")), ref["drawn"])
            check_losses(f"{group} losses", losses, ref["losses"])
            check(group, "weights_t2i", rec.out("hard_negative_weights", 0), normalised(ref["weights_t2i"]),
                  scaled=FEAT_SCALED)
            check(group, "weights_i2t", rec.out("hard_negative_weights", 1), normalised(ref["weights_i2t"]),
                  scaled=FEAT_SCALED)


def test_tokenizer_reproduces_the_published_ids(data, tmp_path):
    """The published vocabulary with the project's BLIP tokenizer set-up and caption encoder."""
    (tmp_path / "vocab.txt").write_text("\n".join(data["config"]["vocab"]) + "\n", encoding="utf-8")
    tokenizer = load_blip_tokenizer(tmp_path, sign_tokens=False)
    assert (len(tokenizer), tokenizer.enc_token_id, tokenizer.bos_token_id, tokenizer.sep_token_id) == (
        1000, ENC_TOKEN_ID, 998, SEP_TOKEN_ID)
    captions = BlipCaptions(tokenizer, max_words=180, max_length=180, sign_tokens=False)
    for stage in STAGES:
        inputs = data[f"stage{stage}"]["inputs"]
        for prefix in ("", "eval_"):
            encoded = [captions.encode(c) for c in inputs[f"{prefix}captions_raw"]]
            check_exact(f"blip{stage} tokens", f"{prefix}ids", torch.stack([e[0] for e in encoded]),
                        inputs[f"{prefix}text_input_ids"])
            check_exact(f"blip{stage} tokens", f"{prefix}mask", torch.stack([e[1] for e in encoded]),
                        inputs[f"{prefix}text_attention_mask"])


SENSITIVITY = [(1, "compat.local_pool_mask=fixed", "itc"), (2, "compat.local_pool_mask=fixed", "itc"),
               (1, "compat.blip_eval_pool_range=fixed", "txt_emb")]


@pytest.mark.parametrize(("stage", "switch", "output"), SENSITIVITY)
def test_one_fixed_switch_moves_an_output_past_the_tolerance(data, stage, switch, output):
    result, ref = run(stage, data, (switch,)), data[f"stage{stage}"]["outputs"]
    if output == "txt_emb":
        dev, tol = abs_dev(result.evaluation[output], ref[output]), EMB_ABS
    else:
        dev, tol = rel_dev(result.losses[output], ref["losses"][output]), LOSS_REL
    MEASURED[f"blip{stage} sensitivity {switch} {output}"] = dev
    assert dev > 100 * tol, f"{switch}: {output} moved only {dev:.3g} (tolerance {tol:g})"

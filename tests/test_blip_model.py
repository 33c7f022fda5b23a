"""Fashion-FINE on BLIP model: published key set at base size, activation checkpointing, BLIP checkpoint
loading, and the compat/fixed behaviours of the model (docs/compat.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from timm.layers import resample_abs_pos_embed

import models.vit as vit
from engine.config import load_config
from engine.errors import DataError
from models.blip_config import BlipModelConfig
from models.fine_blip import FineBlipRetrieval
from models.fine_config import LossConfig
from models.losses import hard_negative_weights
from models.weights import load_weights
from tasks.blip_schema import BlipRetrievalConfig
from tasks.compat import CompatConfig
from tests.blip_helpers import ROOT, tiny_config

KEYS_JSON = Path(__file__).parent / "data" / "fine_blip_state_dict.json"
BASE_VOCAB = 30524  # bert-base-uncased + [DEC] + [ENC]
VOCAB, SEP, ENC = 50, 3, 49


def published_config(stage: int = 2) -> BlipModelConfig:
    return load_config(BlipRetrievalConfig, [ROOT / f"configs/blip/retrieval_fashionfine_{stage}.yaml"]).model


def tiny_model_config(**changes) -> BlipModelConfig:
    cfg = tiny_config("2").model
    return dataclasses.replace(cfg, **changes)


def make_model(cfg: BlipModelConfig | None = None, compat: CompatConfig | None = None,
               vocab: int = VOCAB) -> FineBlipRetrieval:
    torch.manual_seed(0)
    return FineBlipRetrieval(cfg or tiny_model_config(), LossConfig(), (compat or CompatConfig()).model_behaviour(), vocab, SEP, ENC)


def make_batch(b: int = 4, length: int = 12, res: int = 64, products: list[int] | None = None) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, VOCAB - 1, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    ids[:, 0] = 2
    for i in range(b):  # texts of different lengths: [CLS] words [SEP] [PAD]...
        n = length - i
        ids[i, n - 1], ids[i, n:], mask[i, n:] = SEP, 0, 0
    idx = torch.tensor(products if products is not None else list(range(b)))
    return {"image": torch.randn(b, 3, res, res, generator=g), "input_ids": ids, "attention_mask": mask,
            "product_idx": idx}


# ----------------------------------------------------------------------------- key set


def test_base_state_dict_matches_published_keys_and_shapes():
    ref = json.loads(KEYS_JSON.read_text())["state_dict"]
    with torch.device("meta"):
        model = FineBlipRetrieval(published_config(2), LossConfig(), CompatConfig().model_behaviour(), BASE_VOCAB, 102, 30523)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ref) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(ref)) == []  # unexpected
    assert {k: v for k, v in ours.items() if v != ref[k]} == {}
    assert len(ours) == json.loads(KEYS_JSON.read_text())["tensors"] == 952


def test_stage1_adds_exactly_the_phrase_convolutions():
    with torch.device("meta"):
        stage1 = FineBlipRetrieval(published_config(1), LossConfig(), CompatConfig().model_behaviour(), BASE_VOCAB, 102, 30523)
    ref = json.loads(KEYS_JSON.read_text())["state_dict"]
    extra = {k: list(v.shape) for k, v in stage1.state_dict().items() if k not in ref}
    assert extra == {"unigram_conv.weight": [768, 768, 1], "unigram_conv.bias": [768],
                     "bigram_conv.weight": [768, 768, 2], "bigram_conv.bias": [768],
                     "trigram_conv.weight": [768, 768, 3], "trigram_conv.bias": [768]}
    assert set(ref) <= set(stage1.state_dict())


def test_published_model_settings():
    cfg = published_config(1)
    assert (cfg.vision.image_res, cfg.vision.grad_ckpt_layers, cfg.queue_size) == (384, 4, 57600)
    assert (cfg.text.cross_attention, cfg.text.type_vocab, cfg.negative_all_rank) == ("all", 0, True)


# ----------------------------------------------------------------------------- forward and checkpointing


@pytest.mark.parametrize("stage", [1, 2])
def test_forward_returns_named_losses_and_fills_queues(stage):
    model = make_model(tiny_model_config(stage=stage, queue_size=8))
    batch = make_batch(products=[0, 1, 1, 2])
    losses = model(batch)
    assert set(losses) == ({"itc", "itm", "symbol"} if stage == 1 else {"itc", "itm"})
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.visual_encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.idx_queue[0, :4].tolist() == [0, 1, 1, 2] and int(model.ptr_queue) == 4


def test_gradient_checkpointing_same_loss_and_gradients(monkeypatch):
    """The last N ViT blocks under torch's checkpoint give the loss and gradients of the plain model."""
    calls = []
    real = vit.checkpoint
    monkeypatch.setattr(vit, "checkpoint", lambda fn, *a, **k: calls.append(1) or real(fn, *a, **k))
    plain = make_model(tiny_model_config(vision=dataclasses.replace(tiny_model_config().vision, grad_ckpt_layers=0)))
    ckpt = make_model(tiny_model_config(vision=dataclasses.replace(tiny_model_config().vision, grad_ckpt_layers=2)))
    ckpt.load_state_dict(plain.state_dict())
    batch = make_batch(products=[0, 1, 2, 0])
    results = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(5)  # the matching negatives are drawn from torch's generator
        losses = model(batch)
        total = sum(losses.values())
        total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: float(v.detach()) for k, v in losses.items()}, grads))
    assert calls and len(calls) == 2  # two checkpointed blocks, online encoder only
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert grads_a.keys() == grads_b.keys()
    worst = max(float((grads_a[n] - grads_b[n]).abs().max()) for n in grads_a)
    assert worst <= 1e-5


def test_matching_negatives_never_the_same_product():
    sim = torch.randn(2, 6)
    same = torch.tensor([[0, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)  # rank 1 of 3, batch 2
    w = hard_negative_weights(sim, same, self_offset=2)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert w[0, 2] == 0 and w[0, 5] == 0 and w[1, 3] == 0  # own column (offset 2 + i) and same ids
    w = hard_negative_weights(sim, torch.ones(2, 6, dtype=torch.bool), self_offset=2)  # nothing admissible
    assert w[0, 2] == 0 and w[1, 3] == 0 and torch.allclose(w.sum(1), torch.ones(2))


# ----------------------------------------------------------------------------- compat / fixed


def test_eval_pool_range_compat_pools_the_sign_fixed_does_not():
    batch = make_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    fixed, compat = make_model(), make_model(compat=CompatConfig(blip_eval_pool_range="compat"))
    compat.load_state_dict(fixed.state_dict())
    for model in (fixed, compat):
        model.eval()
    assert not torch.allclose(fixed.encode_text(ids, mask, True), fixed.encode_text(ids, mask, False))
    assert torch.allclose(compat.encode_text(ids, mask, True), compat.encode_text(ids, mask, False))
    assert torch.allclose(compat.encode_text(ids, mask, True), fixed.encode_text(ids, mask, False))


def test_padding_in_word_pooling_compat_only():
    """compat (compat.local_pool_mask): pooled word features depend on the padded length; fixed: they do not."""
    short = make_batch(length=12)
    ids, mask = short["input_ids"], short["attention_mask"]
    long_ids = torch.cat([ids, torch.zeros(4, 8, dtype=torch.long)], 1)
    long_mask = torch.cat([mask, torch.zeros(4, 8, dtype=torch.long)], 1)
    for mode, equal in (("fixed", True), ("compat", False)):
        model = make_model(compat=CompatConfig(local_pool_mask=mode)).eval()
        same = torch.allclose(model.encode_text(ids, mask), model.encode_text(long_ids, long_mask), atol=1e-5)
        assert same is equal, mode


def test_stage1_pools_words_after_the_sign_stage2_after_cls():
    model = make_model()
    ids, mask = make_batch()["input_ids"], make_batch()["attention_mask"]
    assert model.word_range(ids, mask, has_sign=True)[0] == 2
    assert model.word_range(ids, mask, has_sign=False)[0] == 1
    start, word_mask = model.word_range(ids, mask, has_sign=False)
    assert not word_mask[ids[:, 1:] == SEP].any()  # [SEP] and padding excluded in fixed mode


def test_itm_input_starts_with_enc_token(monkeypatch):
    model = make_model()
    seen = []
    real = model.text_encoder.multimodal
    monkeypatch.setattr(model.text_encoder, "multimodal", lambda ids, *a, **k: seen.append(ids) or real(ids, *a, **k))
    model(make_batch())
    assert seen and all((ids[:, 0] == ENC).all() for ids in seen)
    assert [ids.shape[0] for ids in seen] == [4, 8]  # positives, then a negative text and a negative image each


# ----------------------------------------------------------------------------- checkpoints


def blip_base_like(model: FineBlipRetrieval, grid: int = 14, queue: int = 64) -> dict[str, torch.Tensor]:
    """A BLIP `model_base.pth`-style state dict for `model`: 224-px position embeddings, pretraining queues
    of another length and pointer name, no FINE pooling / id queue, and the captioning decoder."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in ("visual_encoder.pos_embed", "visual_encoder_m.pos_embed"):
        state[key] = torch.randn(1, 1 + grid * grid, state[key].shape[-1])
    for key in ("image_queue", "text_queue"):
        state[key] = torch.randn(state[key].shape[0], queue)
    for key in ("idx_queue", "ptr_queue", "W_v", "att_layer_v.weight", "att_layer_v.bias"):
        del state[key]
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    state["text_decoder.bert.embeddings.word_embeddings.weight"] = torch.randn(VOCAB, 64)
    state["text_decoder.cls.predictions.bias"] = torch.zeros(VOCAB)
    return state


def test_blip_model_base_loads_with_interpolation_drops_and_notes(tmp_path):
    model = make_model(tiny_model_config(vision=dataclasses.replace(tiny_model_config().vision, image_res=384,
                                                                    patch_size=16)))
    assert model.visual_encoder.pos_embed.shape[1] == 577
    source = make_model(tiny_model_config(vision=dataclasses.replace(tiny_model_config().vision, image_res=384,
                                                                     patch_size=16)))
    state = blip_base_like(source)
    torch.save({"model": state}, tmp_path / "model_base.pth")
    queue_before = model.image_queue.clone()
    report = load_weights(model, tmp_path / "model_base.pth", family="blip")
    assert [n for n in report.notes if "resampled" in n] == ["visual_encoder.pos_embed resampled 14x14 -> 24x24",
                                                             "visual_encoder_m.pos_embed resampled 14x14 -> 24x24"]
    expected = resample_abs_pos_embed(state["visual_encoder.pos_embed"], [24, 24], antialias=False)
    assert torch.equal(model.visual_encoder.pos_embed, expected)
    assert list(report.dropped) == ["image_queue", "text_queue"]
    assert torch.equal(model.image_queue, queue_before)
    assert any("text_decoder" in note for note in report.notes)
    assert "unexpected (ignored): queue_ptr; ignored 2 keys of BLIP's text decoder" in report.summary()
    assert set(report.missing) == {"W_v", "att_layer_v.weight", "att_layer_v.bias", "idx_queue", "ptr_queue"}
    assert report.unexpected == ["queue_ptr"]
    assert torch.equal(model.text_encoder.encoder.layer[0].crossattention.self.key.weight,
                       state["text_encoder.encoder.layer.0.crossattention.self.key.weight"])


def test_word_embeddings_grow_for_added_sign_tokens(tmp_path):
    small, big = make_model(vocab=VOCAB), make_model(vocab=VOCAB + 9)
    torch.save({"model": small.state_dict()}, tmp_path / "small.pth")
    fresh_rows = big.text_encoder.embeddings.word_embeddings.weight[VOCAB:].clone()
    report = load_weights(big, tmp_path / "small.pth", family="blip")
    weight = big.text_encoder.embeddings.word_embeddings.weight
    assert torch.equal(weight[:VOCAB], small.text_encoder.embeddings.word_embeddings.weight)
    assert torch.equal(weight[VOCAB:], fresh_rows)
    assert len([n for n in report.notes if "grown 50 -> 59 rows" in n]) == 2 and not report.dropped
    # strict (evaluation in fixed mode of a released model): the same growth, everything else must match
    again = make_model(vocab=VOCAB + 9)
    fresh_rows = again.text_encoder.embeddings.word_embeddings.weight[VOCAB:].clone()
    report = load_weights(again, tmp_path / "small.pth", family="blip", strict=True)
    weight = again.text_encoder.embeddings.word_embeddings.weight
    assert torch.equal(weight[:VOCAB], small.text_encoder.embeddings.word_embeddings.weight)
    assert torch.equal(weight[VOCAB:], fresh_rows)
    assert len([n for n in report.notes if "grown 50 -> 59 rows" in n]) == 2
    torch.save({"model": big.state_dict()}, tmp_path / "big.pth")
    with pytest.raises(DataError, match="word_embeddings.weight has shape"):  # more rows in the file: refused
        load_weights(small, tmp_path / "big.pth", family="blip", strict=True)


def test_fine_blip_checkpoint_loads_strictly_and_rejects_other_key_sets(tmp_path):
    trained, model = make_model(), make_model(tiny_model_config(queue_size=32))
    with torch.no_grad():
        trained.temp.fill_(0.05)
    state = trained.state_dict()
    torch.save({"model": state}, tmp_path / "ours.pth")
    report = load_weights(model, tmp_path / "ours.pth", family="blip", strict=True)
    assert not (report.missing or report.unexpected or report.dropped) and report.remapped == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    torch.save({"model": {**state, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    with pytest.raises(DataError, match=r"missing \[\], unexpected \[extra.weight\]"):
        load_weights(model, tmp_path / "extra.pth", family="blip", strict=True)
    torch.save({"model": {k: v for k, v in state.items() if k != "W_v"}}, tmp_path / "less.pth")
    with pytest.raises(DataError, match=r"missing \[W_v\]"):
        load_weights(model, tmp_path / "less.pth", family="blip", strict=True)
    torch.save({"model": {"something.else": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="not a BLIP / Fashion-FINE-on-BLIP checkpoint"):
        load_weights(model, tmp_path / "other.pth", family="blip")


def test_stage2_starts_from_a_stage1_checkpoint(tmp_path):
    stage1, stage2 = make_model(tiny_model_config(stage=1)), make_model(tiny_model_config(stage=2))
    torch.save({"model": stage1.state_dict()}, tmp_path / "checkpoint_2.pth")
    report = load_weights(stage2, tmp_path / "checkpoint_2.pth", family="blip")
    assert sorted(report.unexpected) == sorted(f"{n}gram_conv.{p}" for n in ("uni", "bi", "tri")
                                               for p in ("weight", "bias"))
    assert not report.missing and not report.notes

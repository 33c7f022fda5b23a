"""The three Fashion-FINE models: published state-dict layout (base size, meta device), checkpoint loading,
the compat/fixed switches (docs/compat.md), tiny forward/backward passes and bf16 autocast on CPU."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

import models.fine_dual_encoder as dual_encoder
from engine.errors import DataError
from engine.sections import OptimConfig, ScheduleConfig
from models.bert import TextConfig
from models.fine_config import FineModelConfig, LossConfig
from models.fine_pretrain import FinePretrainModel
from models.fine_retrieval import FineRetrievalModel
from models.fine_tgir import FineTGIRModel
from models.vit import VisionConfig
from models.weights import load_weights
from tasks.compat import CompatConfig
from tasks.fine_common import optimizer_and_schedule

REFERENCE = Path(__file__).parent / "data" / "fine_pretrain_state_dict.json"  # copy of the spec's file
VOCAB, CLS, SEP, PAD, SIGN = 40, 11, 12, 0, 3
B, T, RES = 4, 12, 16


# ----------------------------------------------------------------------------- helpers


def tiny_config(queue: int = 2 * B) -> FineModelConfig:
    return FineModelConfig(
        vision=VisionConfig(image_res=RES, patch_size=8, width=16, depth=1, heads=2, init_std=0.2),
        text=TextConfig(hidden=16, layers=2, heads=2, intermediate=32, fusion_layer=1, dropout=0.0,
                        max_positions=32, initializer_range=0.2),
        embed_dim=8, queue_size=queue, momentum=0.9)


def tiny(cls: type, mode: str = "fixed", seed: int = 0, queue: int = 2 * B, **compat: str):
    torch.manual_seed(seed)
    return cls(tiny_config(queue), LossConfig(), CompatConfig(mode=mode, **compat).model_behaviour(), vocab_size=VOCAB,
               sep_token_id=SEP)


def text_batch(sign: bool, lengths: tuple[int, ...] = (9, 6, 11, 4), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`[CLS] (sign) words [SEP]` padded to T; `lengths` counts every real token including CLS and SEP."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(14, VOCAB, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = CLS, SEP
        if sign:
            ids[i, 1] = SIGN
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def images(n: int = B, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, RES, RES, generator=torch.Generator().manual_seed(seed))


def pretrain_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    ids, mask = text_batch(sign=True, seed=seed)
    mlm = torch.full_like(ids, -100)
    mlm[:, 3], mlm[1, 2] = ids[:, 3], ids[1, 2]
    rtd = torch.where(mask.bool(), torch.zeros_like(ids), torch.full_like(ids, -100))
    rtd[:, 2] = 1
    return {"image": images(seed=seed), "input_ids": ids, "attention_mask": mask, "mlm_labels": mlm,
            "rtd_labels": rtd, "product_idx": torch.tensor([5, 5, 7, 9])}


def retrieval_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    ids, mask = text_batch(sign=False, seed=seed)
    return {"image": images(seed=seed), "input_ids": ids, "attention_mask": mask,
            "product_idx": torch.tensor([5, 5, 7, 9])}


def tgir_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    ids, mask = text_batch(sign=False, seed=seed)
    return {"ref_image": images(seed=seed), "target_image": images(seed=seed + 100), "input_ids": ids,
            "attention_mask": mask, "ref_id": torch.tensor([0, 1, 2, 3]), "target_id": torch.tensor([4, 5, 4, 6])}


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"model": state}, path)
    return path


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


# ----------------------------------------------------------------------------- (a) published key layout


def reference_shapes() -> dict[str, list[int]]:
    data = json.loads(REFERENCE.read_text())
    assert data["tensors"] == len(data["state_dict"]) == 861
    return data["state_dict"]


def base_shapes(cls: type, mode: str) -> dict[str, list[int]]:
    with torch.device("meta"):
        model = cls(FineModelConfig(), LossConfig(), CompatConfig(mode=mode).model_behaviour(), vocab_size=30522, sep_token_id=102)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def assert_same_layout(ours: dict[str, list[int]], expected: dict[str, list[int]]) -> None:
    missing, unexpected = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not wrong, wrong


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_base_pretraining_model_matches_the_published_state_dict(mode):
    assert_same_layout(base_shapes(FinePretrainModel, mode), reference_shapes())


PRETRAIN_ONLY = ("unigram_conv.", "bigram_conv.", "trigram_conv.", "decoder_layer.", "replace_predict_layer.")


def retrieval_reference(mode: str) -> dict[str, list[int]]:
    ref = reference_shapes()
    out = {k: v for k, v in ref.items() if not k.startswith(PRETRAIN_ONLY) and k != "idx_queue"}
    if mode == "fixed":  # compat.retrieval_id_targets: id-aware targets keep an id queue
        out["idx_queue"] = ref["idx_queue"]
    return out


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_base_retrieval_model_keys(mode):
    assert_same_layout(base_shapes(FineRetrievalModel, mode), retrieval_reference(mode))


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_base_tgir_model_keys(mode):
    ref = reference_shapes()
    expected = {k: v for k, v in retrieval_reference("compat").items()
                if not k.startswith(("itm_head.", "att_layer_v.")) and k not in ("W_v", "text_queue", "queue_ptr")}
    expected.update(fusion_queue=ref["image_queue"], img_queue_ptr=[1], fusion_queue_ptr=[1])
    if mode == "fixed":  # the framework's id-aware targets (label queues beside the feature queues)
        expected.update(image_idx_queue=ref["idx_queue"], fusion_idx_queue=ref["idx_queue"])
    assert_same_layout(base_shapes(FineTGIRModel, mode), expected)


# ----------------------------------------------------------------------------- (b) checkpoint loading


@pytest.fixture
def source() -> FinePretrainModel:
    """A tiny pretraining model whose momentum copies differ from its online encoders (as after training)."""
    model = tiny(FinePretrainModel, seed=1)
    with torch.no_grad():
        for _, momentum in model.momentum_pairs:
            for p in momentum.parameters():
                p.add_(0.01)
        model.queue_ptr.fill_(B)
        model.idx_queue[0, :B] = torch.arange(B)
    return model


def test_published_key_names_load_without_missing_or_unexpected(source, tmp_path):
    state = source.state_dict()
    # the tiny model carries the published names (fewer layers: compare with layer numbers blanked out)
    assert {re.sub(r"\.\d+\.", ".N.", k) for k in state} == {re.sub(r"\.\d+\.", ".N.", k) for k in reference_shapes()}
    target = tiny(FinePretrainModel, seed=2)
    report = load_weights(target, save(state, tmp_path / "ck.pth"), family="fine")
    assert report.missing == [] and report.unexpected == [] and report.dropped == {}
    assert report.remapped == 0 and not report.notes and report.loaded == len(state)
    assert states_equal(target.state_dict(), state, state)
    # the same file also loads strictly (evaluation)
    strict = tiny(FinePretrainModel, seed=3)
    assert load_weights(strict, tmp_path / "ck.pth", family="fine", strict=True).missing == []
    assert states_equal(strict.state_dict(), state, state)


def to_albef_name(key: str) -> str:
    for prefix in ("text_encoder.", "text_encoder_m."):
        if key.startswith(prefix):
            key = prefix + "bert." + key[len(prefix):]
    key = key.replace("decoder_layer.predictions.", "text_encoder.cls.predictions.")
    return key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")


def test_albef_names_are_remapped(source, tmp_path):
    state = source.state_dict()
    albef = {to_albef_name(k): v for k, v in state.items()}
    assert "text_encoder.bert.encoder.layer.0.attention.output.LayerNorm.gamma" in albef
    assert "text_encoder.cls.predictions.decoder.weight" in albef
    albef["text_encoder.bert.pooler.dense.weight"] = torch.zeros(16, 16)  # heads ALBEF has and FINE has not
    albef["text_encoder.cls.seq_relationship.weight"] = torch.zeros(2, 16)
    target = tiny(FinePretrainModel, seed=2)
    report = load_weights(target, save(albef, tmp_path / "albef.pth"), family="fine")
    assert report.remapped > 0 and report.missing == [] and report.unexpected == []
    assert states_equal(target.state_dict(), state, state)


def test_momentum_copied_from_online_when_absent(source, tmp_path):
    state = {k: v for k, v in source.state_dict().items() if not k.split(".")[0].endswith("_m")}
    target = tiny(FinePretrainModel, seed=2)
    report = load_weights(target, save(state, tmp_path / "no_m.pth"), family="fine")
    assert "momentum encoders copied from the online encoders" in report.notes
    assert "copied from the online encoders" in report.summary()
    for online, momentum in target.momentum_pairs:
        for p, p_m in zip(online.parameters(), momentum.parameters()):
            assert torch.equal(p, p_m)
    assert torch.equal(target.visual_encoder_m.pos_embed, source.visual_encoder.pos_embed)
    # an evaluation (strict) load refuses a file without momentum encoders
    with pytest.raises(DataError, match=r"no_m\.pth: .*missing \[<momentum encoders \(\*_m\)>\]"):
        load_weights(tiny(FinePretrainModel), tmp_path / "no_m.pth", family="fine", strict=True)


def test_pos_embed_of_another_grid_is_interpolated(source, tmp_path):
    state = source.state_dict()
    old = torch.randn(1, 1 + 16, 16)  # a 4x4 grid; the tiny model has 2x2
    old[:, 1:] = torch.linspace(-1, 1, 16)  # constant over the grid: bicubic keeps it constant
    state["visual_encoder.pos_embed"] = old
    state["visual_encoder_m.pos_embed"] = old.clone()
    target = tiny(FinePretrainModel, seed=2)
    report = load_weights(target, save(state, tmp_path / "grid.pth"), family="fine")
    assert report.notes == ["visual_encoder.pos_embed resampled 4x4 -> 2x2",
                            "visual_encoder_m.pos_embed resampled 4x4 -> 2x2"]
    new = target.visual_encoder.pos_embed.detach()
    assert new.shape == (1, 5, 16)
    assert torch.equal(new[:, 0], old[:, 0])  # CLS row unchanged
    assert torch.allclose(new[:, 1:], old[:, 1:2].expand(1, 4, 16), atol=1e-5)
    assert torch.equal(new, resample_abs_pos_embed(old, [2, 2], antialias=False))
    assert torch.equal(target.visual_encoder_m.pos_embed, new)


def test_queue_of_another_length_is_dropped_with_a_report(source, tmp_path):
    longer = tiny(FinePretrainModel, seed=1, queue=4 * B)
    with torch.no_grad():
        longer.queue_ptr.fill_(3 * B)  # a pointer that does not exist in the shorter queue
    target = tiny(FinePretrainModel, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items() if "queue" in k}
    report = load_weights(target, save(longer.state_dict(), tmp_path / "q.pth"), family="fine")
    assert sorted(report.dropped) == ["idx_queue", "image_queue", "queue_ptr", "text_queue"]
    assert report.dropped["image_queue"] == ((8, 4 * B), (8, 2 * B))
    assert "dropped (shape differs" in report.summary() and "image_queue" in report.summary()
    assert states_equal(target.state_dict(), before, ["image_queue", "text_queue", "idx_queue"])
    assert target.queue_ptr.item() == 0  # the pointer belongs to the dropped queues
    assert torch.isfinite(torch.stack(list(target(pretrain_batch()).values()))).all()
    with pytest.raises(DataError, match="image_queue has shape"):
        load_weights(tiny(FinePretrainModel), tmp_path / "q.pth", family="fine", strict=True)


@pytest.mark.parametrize("state", [
    {"backbone.layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "attr_embedding.weight": torch.zeros(8, 512)},
    {"foo": torch.zeros(3)},
])
def test_checkpoint_of_another_model_fails_clearly(state, tmp_path):
    with pytest.raises(DataError, match=r"other\.pth: not a Fashion-FINE / ALBEF checkpoint \(no visual_encoder"):
        load_weights(tiny(FinePretrainModel), save(state, tmp_path / "other.pth"), family="fine")


def test_missing_weights(source, tmp_path):
    state = source.state_dict()
    no_itm = {k: v for k, v in state.items() if not k.startswith("itm_head.")}
    path = save(no_itm, tmp_path / "no_itm.pth")
    with pytest.raises(DataError, match=r"strict load\): missing \[itm_head"):
        load_weights(tiny(FinePretrainModel), path, family="fine", strict=True)
    report = load_weights(tiny(FinePretrainModel), path, family="fine")  # initialisation: a fresh head is allowed
    assert sorted(report.missing) == ["itm_head.bias", "itm_head.weight"]
    no_proj = {k: v for k, v in state.items() if not k.startswith("vision_proj.")}
    with pytest.raises(DataError, match="model weights missing from the file: vision_proj.weight"):
        load_weights(tiny(FinePretrainModel), save(no_proj, tmp_path / "no_proj.pth"), family="fine")


def test_vocabulary_size_mismatch_names_the_key(source, tmp_path):
    state = source.state_dict()
    key = "text_encoder.embeddings.word_embeddings.weight"
    state[key] = torch.zeros(VOCAB + 5, 16)
    with pytest.raises(DataError, match=rf"{key} has shape \(45, 16\), the model expects \(40, 16\)"):
        load_weights(tiny(FinePretrainModel), save(state, tmp_path / "vocab.pth"), family="fine")


def test_retrieval_loads_a_pretraining_checkpoint(source, tmp_path):
    path = save(source.state_dict(), tmp_path / "pt.pth")
    report = load_weights(tiny(FineRetrievalModel, "compat"), path, family="fine")
    assert report.missing == [] and set(report.unexpected) >= {"idx_queue", "unigram_conv.weight"}


# ----------------------------------------------------------------------------- (c) compat vs fixed


def test_word_range_d5_d6():
    ids, mask = text_batch(sign=False)
    fixed, compat = tiny(FineRetrievalModel, "fixed"), tiny(FineRetrievalModel, "compat")
    start, word_mask = fixed.word_range(ids, mask, has_sign=False)
    assert start == 1
    expected = mask[:, 1:].bool() & (ids[:, 1:] != SEP)
    assert torch.equal(word_mask, expected)
    assert word_mask[0].tolist() == [True] * 7 + [False] * 4  # 9 tokens: CLS, 7 words, SEP, then padding
    assert fixed.word_range(ids, mask, has_sign=True)[0] == 2
    assert compat.word_range(ids, mask, has_sign=False) == (2, None)
    assert compat.word_range(ids, mask, has_sign=True) == (2, None)
    # the switches are independent: compat layout with the padding mask
    mixed = tiny(FineRetrievalModel, "fixed", text_layout="compat")
    start, word_mask = mixed.word_range(ids, mask, has_sign=False)
    assert start == 2 and torch.equal(word_mask, mask[:, 2:].bool() & (ids[:, 2:] != SEP))


def change_padding(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    other = ids.clone()
    other[mask == 0] = 20  # another token id where the attention mask is 0
    assert not torch.equal(other, ids)
    return other


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_padding_content_changes_the_text_feature_only_in_compat(mode):
    model = tiny(FineRetrievalModel, mode).eval()
    ids, mask = text_batch(sign=False)
    assert (mask == 0).any(dim=1).all()  # every row is padded
    a, b = model.encode_text(ids, mask), model.encode_text(change_padding(ids, mask), mask)
    if mode == "fixed":
        assert torch.allclose(a, b, atol=1e-6)
    else:
        assert ((a - b).abs().amax(dim=1) > 1e-4).all()


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_padding_content_changes_the_symbol_feature_only_in_compat(mode):
    model = tiny(FinePretrainModel, mode).eval()
    ids, mask = text_batch(sign=True)
    other = change_padding(ids, mask)
    with torch.no_grad():
        a = model.symbol_feature(model.text_encoder.text(ids, mask), ids, mask)
        b = model.symbol_feature(model.text_encoder.text(other, mask), other, mask)
    assert torch.allclose(a, b, atol=1e-6) == (mode == "fixed")


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_itm_negatives_exclude_the_same_product_only_in_fixed(mode, monkeypatch):
    """compat.itm_negative_mask: same-product pairs scored far above the rest are always drawn in compat, never in fixed."""
    drawn: list[torch.Tensor] = []
    original = dual_encoder.sample_hard_negatives

    def recording(sim: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
        drawn.append(original(sim, same))
        return drawn[-1]

    monkeypatch.setattr(dual_encoder, "sample_hard_negatives", recording)
    model = tiny(FinePretrainModel, mode)
    idx = torch.tensor([5, 5, 7, 7])
    sim = torch.zeros(B, B + model.cfg.queue_size)
    sim[:, :B][idx.view(-1, 1) == idx.view(1, -1)] = 50.0
    ids, mask = text_batch(sign=True)
    hidden = model.text_encoder.text(ids, mask)
    tokens = model.visual_encoder(images())
    for _ in range(10):
        model.image_text_matching(hidden, mask, tokens, sim, sim, idx)
    partner = torch.tensor([1, 0, 3, 2])
    draws = torch.stack(drawn)
    if mode == "compat":
        assert (draws == partner).all()
    else:
        assert not (idx[draws] == idx).any()


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_retrieval_targets_d8(mode):
    model = tiny(FineRetrievalModel, mode)
    captured = {}
    original = model.contrastive_loss

    def spy(img, txt, img_m, txt_m, targets, alpha):
        captured["targets"] = targets
        return original(img, txt, img_m, txt_m, targets, alpha)

    model.contrastive_loss = spy
    batch = retrieval_batch()
    model(batch)
    y = captured["targets"]
    assert y.shape == (B, B + model.cfg.queue_size)
    if mode == "compat":
        assert not hasattr(model, "idx_queue")
        assert torch.equal(y, torch.eye(B, B + model.cfg.queue_size))
    else:
        assert model.idx_queue[0, :B].tolist() == batch["product_idx"].tolist()
        assert y[0, :2].tolist() == [0.5, 0.5] and y[1, :2].tolist() == [0.5, 0.5] and y[2, 2] == 1
        assert y[:, B:].sum() == 0  # the id queue held only -100 before this step
        model(retrieval_batch(seed=1))  # now the queue holds last step's ids: products 5, 5 again
        y = captured["targets"]
        assert y[0, B:B + 2].tolist() == [0.25, 0.25] and y[0, :2].tolist() == [0.25, 0.25]


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_tgir_momentum_query_projection_d9(mode):
    model = tiny(FineTGIRModel, mode)
    with torch.no_grad():
        model.combine_text_proj.weight.mul_(-2.0)  # online and momentum combine projections now differ
    ids, mask = text_batch(sign=False)
    with torch.no_grad():
        tokens_m = model.visual_encoder_m(images())
        fused = model.text_encoder_m.fusion(model.text_encoder_m.text(ids, mask), mask, tokens_m)[:, 0]
        proj = model.text_proj_m(fused)
        online = F.normalize(model.combine_text_proj(proj), dim=-1)
        momentum = F.normalize(model.combine_text_proj_m(proj), dim=-1)
        got = model._momentum_query(ids, mask, tokens_m)
    expected, other = (online, momentum) if mode == "compat" else (momentum, online)
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, other, atol=1e-3)


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_temperature_weight_decay_d14(mode):
    compat = CompatConfig(mode=mode)
    model = tiny(FinePretrainModel, mode)
    optimizer, _ = optimizer_and_schedule(model, OptimConfig(lr=1e-4, weight_decay=0.02), ScheduleConfig(), compat,
                                          epochs=1, iters_per_epoch=10)
    decay = {name: g["weight_decay"] for g in optimizer.param_groups for name in g["param_names"]}
    assert decay["temp"] == (0.02 if mode == "compat" else 0.0)
    assert decay["W_v"] == 0.02 and decay["itm_head.bias"] == 0.0  # unchanged by the switch
    assert not any(name.split(".")[0].endswith("_m") for name in decay)  # momentum copies are not optimised


# ----------------------------------------------------------------------------- (d) forward / backward


def assert_trains(model, batch: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    losses = model(batch)
    assert tuple(sorted(losses)) == tuple(sorted(names))
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_grad, no_grad
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    return losses


def assert_unit_rows(x: torch.Tensor, shape: tuple[int, int]) -> None:
    assert x.shape == shape and x.dtype == torch.float32
    assert torch.allclose(x.norm(dim=1), torch.ones(shape[0]), atol=1e-5)


def test_pretraining_forward_backward_and_queues():
    model = tiny(FinePretrainModel)
    batch = pretrain_batch()
    losses = assert_trains(model, batch, ("itc", "itm", "symbol", "mlm", "rtd"))
    assert losses["mlm"] > 0 and losses["rtd"] > 0 and 0 <= losses["symbol"] <= 1
    assert model.queue_ptr.item() == B
    assert model.idx_queue[0].tolist() == [5, 5, 7, 9] + [-100] * B
    assert torch.allclose(model.image_queue.norm(dim=0), torch.ones(2 * B), atol=1e-5)
    first = model.image_queue[:, :B].clone()
    with torch.no_grad():
        model(pretrain_batch(seed=1))
    assert model.queue_ptr.item() == 0  # wrapped: Q = 2B
    assert torch.equal(model.image_queue[:, :B], first)
    assert model.idx_queue[0].tolist() == [5, 5, 7, 9] * 2
    model.eval()
    assert_unit_rows(model.encode_image(images()), (B, 8))
    ids, mask = text_batch(sign=False)
    assert_unit_rows(model.encode_text(ids, mask), (B, 8))


def test_retrieval_forward_backward():
    model = tiny(FineRetrievalModel)
    assert_trains(model, retrieval_batch(), ("itc", "itm"))
    assert model.queue_ptr.item() == B and model.idx_queue[0, :B].tolist() == [5, 5, 7, 9]
    model.eval()
    assert_unit_rows(model.encode_image(images()), (B, 8))
    assert_unit_rows(model.encode_text(*text_batch(sign=False)), (B, 8))


def test_tgir_forward_backward():
    model = tiny(FineTGIRModel, queue=4 * B)
    assert_trains(model, tgir_batch(), ("itc",))
    assert model.img_queue_ptr.item() == 2 * B and model.fusion_queue_ptr.item() == B
    assert model.image_idx_queue[0, :2 * B].tolist() == [4, 5, 4, 6, 0, 1, 2, 3]  # targets, then references
    assert model.fusion_idx_queue[0, :B].tolist() == [4, 5, 4, 6]
    model.eval()
    ids, mask = text_batch(sign=False)
    assert_unit_rows(model.encode_query(ids, mask, images()), (B, 8))
    assert_unit_rows(model.encode_image(images()), (B, 8))


# ----------------------------------------------------------------------------- (e) bf16 autocast on CPU


@pytest.mark.parametrize("cls,batch", [(FinePretrainModel, pretrain_batch), (FineRetrievalModel, retrieval_batch),
                                       (FineTGIRModel, tgir_batch)])
def test_bf16_autocast_on_cpu(cls, batch):
    model = tiny(cls, queue=4 * B)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    fp32 = tiny(cls, queue=4 * B)(batch())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    for name in losses:  # bf16 rounding only
        assert losses[name].item() == pytest.approx(fp32[name].item(), rel=0.1, abs=0.05)

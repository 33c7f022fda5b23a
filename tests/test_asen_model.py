"""ASEN++ model: attention properties, parameter counts, published key layout, backbone weights, losses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from engine.config import load_config
from engine.errors import DataError
from engine.optim import build_param_groups
from models.asen import ASENet, AttnEmbedding, build_trunk
from models.weights import apply_backbone_weights, asen_from_published, init_backbones, load_weights
from tasks.asen import build_model, optim_config
from tasks.asen_schema import AsenConfig

ROOT = Path(__file__).resolve().parents[1]
SPEC_KEYS = Path(__file__).resolve().parent / "data" / "asenpp_state_dict.json"  # published key set
TINY = ROOT / "configs/asen/synthetic"


def config(*files: Path, sets: tuple[str, ...] = ()) -> AsenConfig:
    return load_config(AsenConfig, list(files), list(sets))


def tiny(stage: int, *sets: str) -> AsenConfig:
    return config(TINY / f"s{stage}.yaml", sets=("DATA.ATTRIBUTES.NUM=[4, 3, 3]", *sets))


def fake_batch(n: int, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([[160, 128], [128, 160], [144, 144]])[torch.arange(n) % 3]
    originals = torch.zeros(n, 3, 160, 160, dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes.tolist()):
        originals[i, :, :h, :w] = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return {"image": torch.randn(n, 3, size, size, generator=g), "attr": torch.randint(0, 3, (n,), generator=g),
            "original": originals, "size": sizes}


# ------------------------------------------------------------------ attention
def test_spatial_weights_sum_to_one_and_channel_weights_lie_in_0_1():
    torch.manual_seed(0)
    head = AttnEmbedding(channels=32, attr_dim=16, common=8, reduction=2, out_dim=12)
    x, e = 3 * torch.randn(5, 32, 6, 7), torch.randn(5, 16)
    alpha = head.spatial_weights(x, e)
    assert alpha.shape == (5, 42) and (alpha > 0).all()
    assert torch.allclose(alpha.sum(1), torch.ones(5), atol=1e-6)
    f = torch.einsum("bn,bcn->bc", alpha, x.flatten(2))
    m = head.channel_weights(f, e)
    assert m.shape == (5, 32) and (m > 0).all() and (m < 1).all()
    y, attn = head(x, e)
    assert y.shape == (5, 12) and attn.shape == (5, 6, 7) and torch.allclose(attn.flatten(1), alpha)
    assert torch.allclose(y, head.feature_fc(f * m), atol=1e-5)
    # attribute-specific: another attribute vector moves the attention
    assert not torch.allclose(head.spatial_weights(x, torch.randn(5, 16)), alpha)


def test_heads_without_spatial_or_channel_attention():
    head = AttnEmbedding(32, 16, 8, 2, 12, spatial=False, channel=False)
    x = torch.randn(2, 32, 3, 3)
    y, attn = head(x, torch.randn(2, 16))
    assert attn is None and torch.allclose(y, head.feature_fc(x.mean(dim=(2, 3))), atol=1e-6)


# ------------------------------------------------------------------ real-size model
@pytest.fixture(scope="module")
def fashionai_stage2() -> ASENet:
    cfg = config(ROOT / "configs/asen/FashionAI/FashionAI.yaml", ROOT / "configs/asen/FashionAI/s2.yaml")
    return build_model(cfg, 8)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_specification(fashionai_stage2):
    m = fashionai_stage2
    assert count(m.choices["global"].basenet) == 8_543_296
    assert count(m.choices["local"].basenet) == 8_170_304
    assert count(m.choices["global"].attnnet) == 3_411_968
    assert count(m.choices["local"].attnnet) == 854_400
    assert count(m.attrnet) == 4_096
    assert count(m) == 20_984_064
    stage1 = config(ROOT / "configs/asen/FashionAI/FashionAI.yaml", ROOT / "configs/asen/FashionAI/s1.yaml")
    assert not stage1.MODEL.LOCAL.ENABLE and stage1.SOLVER.EPOCHS == 50
    assert count(m.attrnet) + count(m.choices["global"]) == 11_959_360


def to_published(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> the published layout: the attribute table repeated under every branch present."""
    levels = sorted({k.split(".")[1] for k in state if k.startswith("choices.")}, key=["global", "local"].index)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for name in [f"choices.{level}.{key}" for level in levels] if key.startswith("attrnet.") else [key]:
            out[name] = value
    return out


def test_published_key_layout_maps_onto_the_model(fashionai_stage2):
    spec = json.loads(SPEC_KEYS.read_text())["state_dict"]
    assert len(spec) == 458
    published = {k: torch.empty(shape, device="meta") for k, shape in spec.items()}
    mapped, renamed = asen_from_published(published)
    assert renamed == 2  # the attribute table, once per branch
    own = fashionai_stage2.state_dict()
    assert set(mapped) == set(own)  # no missing, no unexpected keys
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    assert {k: list(v.shape) for k, v in to_published(own).items()} == spec


def test_published_checkpoint_loads_with_a_report(tmp_path):
    model = build_model(tiny(2), 3)
    state = to_published({k: v.clone() for k, v in model.state_dict().items()})
    other = build_model(tiny(2, "SEED=1"), 3)
    torch.nn.init.normal_(other.attrnet.attr_embedding.weight)
    # published files may hold the epoch MAP as a NumPy scalar
    torch.save({"epoch": 3, "state_dict": state, "mAP": np.float64(0.5)}, tmp_path / "published.pth.tar")
    report = load_weights(other, tmp_path / "published.pth.tar", family="asen", strict=True, source_name="pub")
    assert report.remapped == 2 and not report.missing and not report.unexpected and report.source == "pub"
    assert report.loaded == len(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    state["choices.local.attrnet.attr_embedding.weight"] = state["choices.local.attrnet.attr_embedding.weight"] + 1
    with pytest.raises(DataError, match="differs from the global copy"):
        asen_from_published(state)


def test_partial_weights_are_reported_and_refused_when_strict():
    stage1, stage2 = build_model(tiny(1), 3), build_model(tiny(2), 3)
    report = load_weights(stage2, stage1.state_dict(), family="asen")
    assert report.missing and all(k.startswith("choices.local.") for k in report.missing)
    assert "choices.local.basenet.* (90)" in report.summary()
    with pytest.raises(DataError, match="does not match this model.*--allow-partial"):
        load_weights(stage2, stage1.state_dict(), family="asen", strict=True)
    wrong = build_model(tiny(1, "MODEL.EMBED_SIZE=128"), 3)
    with pytest.raises(DataError, match="feature_fc.weight has shape"):
        load_weights(wrong, stage1.state_dict(), family="asen")


# ------------------------------------------------------------------ backbone weights
def test_torchvision_imagenet_weights_load_into_the_truncated_trunk(tmp_path):
    reference = torchvision.models.resnet18()
    state = reference.state_dict()
    # old torchvision releases have no BatchNorm num_batches_tracked buffers
    torch.save({k: v for k, v in state.items() if "num_batches_tracked" not in k}, tmp_path / "resnet18-f37072fd.pth")
    trunk = build_trunk("resnet18")
    report = load_weights(trunk, tmp_path / "resnet18-f37072fd.pth", family="resnet", strict=True)
    assert report.missing and all(k.endswith("num_batches_tracked") for k in report.missing)
    own = trunk.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own if "num_batches_tracked" not in k)
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(DataError, match=r"resnet34\.pth: the file does not match .* unexpected \[layer1\.2\."):
        load_weights(trunk, tmp_path / "resnet34.pth", family="resnet", strict=True)


def test_backbone_weights_option_finds_release_files(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18-f37072fd.pth")
    cfg = tiny(2)
    apply_backbone_weights(cfg.MODEL, [str(tmp_path)])
    assert cfg.MODEL.GLOBAL.BACKBONE.WEIGHTS == cfg.MODEL.LOCAL.BACKBONE.WEIGHTS == str(tmp_path / "resnet18-f37072fd.pth")
    model = build_model(cfg, 3)
    assert [r.family for r in init_backbones(model)] == ["resnet", "resnet"]
    assert torch.equal(model.choices["local"].basenet.conv1.weight, model.choices["global"].basenet.conv1.weight)
    apply_backbone_weights(cfg.MODEL, ["local=x.pth"])
    assert cfg.MODEL.LOCAL.BACKBONE.WEIGHTS == "x.pth"
    with pytest.raises(DataError, match="no weight file"):
        apply_backbone_weights(config(ROOT / "configs/asen/FashionAI/s1.yaml").MODEL, [str(tmp_path)])


# ------------------------------------------------------------------ forward, losses, groups
def test_stage2_parameter_groups_follow_the_specification():
    model = build_model(tiny(2), 3)
    groups = build_param_groups(model.named_parameters(), optim_config(tiny(2)))
    assert [g["name"] for g in groups] == ["local_backbone", "local_head", "global_and_attributes"]
    assert [g["lr"] for g in groups] == [5e-4, 5e-4, 5e-5]
    assert all(g["weight_decay"] == 0.0 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert id(model.attrnet.attr_embedding.weight) in {id(p) for p in groups[2]["params"]}
    # the same tensors, in the same order, as the published groups
    local = model.choices["local"]
    published = [list(local.basenet.parameters()), list(local.attnnet.parameters()),
                 list(model.attrnet.parameters()) + list(model.choices["global"].parameters())]
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in ps] for ps in published]
    stage1 = build_model(tiny(1), 3)
    groups1 = build_param_groups(stage1.named_parameters(), optim_config(tiny(1)))
    assert len(groups1) == 1 and groups1[0]["lr"] == 5e-4
    assert [id(p) for p in groups1[0]["params"]] == [id(p) for p in stage1.parameters()]


def test_model_is_built_from_its_model_section_and_plain_values():
    cfg = tiny(2, "SOLVER.MARGIN=0.3", "SOLVER.BETA=0.5", "INPUT.THRESHOLD=0.2")
    model = build_model(cfg, 3)
    assert model.cfg is cfg.MODEL
    assert (model.margin, model.beta, model.threshold, model.global_size, model.local_size) == (0.3, 0.5, 0.2, 64, 32)
    plain = ASENet(cfg.MODEL, 3)  # published defaults for everything outside MODEL
    assert (plain.margin, plain.beta, plain.threshold, plain.global_size, plain.local_size) == (0.2, 0.6, 0.4, 224, 112)
    cfg.MODEL.GLOBAL.ATTENTION.SPATIAL.ENABLE = False
    with pytest.raises(ValueError, match="MODEL.LOCAL.ENABLE needs the global spatial attention"):
        ASENet(cfg.MODEL, 3)


@pytest.mark.parametrize("per_part", [True, False])
def test_training_losses_are_finite_and_reach_every_parameter(per_part):
    torch.manual_seed(0)
    cfg = tiny(2, f"MODEL.BN_PER_TRIPLET_PART={str(per_part).lower()}")
    model = build_model(cfg, 3)
    batch = fake_batch(12)
    batch["attr"] = batch["attr"][:4].repeat(3)
    losses = model(batch)
    assert set(losses) == {"global", "local", "align"} and all(torch.isfinite(v) for v in losses.values())
    assert 0 <= losses["align"] <= 6
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_evaluation_embedding_fuses_normalised_branches_and_handles_a_batch_of_one():
    torch.manual_seed(0)
    model = build_model(tiny(2), 3).eval()
    batch = fake_batch(1)
    with torch.no_grad():
        out = model.encode(batch, with_parts=True)
    assert out["fused"].shape == (1, 512) and out["attention"].shape == (1, 4, 4) and out["box"].shape == (1, 3)
    assert torch.allclose(out["fused"].norm(dim=1), torch.ones(1), atol=1e-5)
    beta = 0.6
    assert torch.allclose(out["fused"][:, :256], beta ** 0.5 * out["global"], atol=1e-6)
    stage1 = build_model(tiny(1), 3).eval()
    with torch.no_grad():
        assert stage1.encode(fake_batch(1))["fused"].shape == (1, 256)

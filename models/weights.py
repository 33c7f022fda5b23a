"""One loader for every weight file the framework reads: its own checkpoints, the published Fashion-FINE /
ALBEF / FashionSAP / BLIP / ASEN++ files, and public backbones (torchvision ResNet, Hugging Face BERT, timm ViT).

`load_weights` reads the file once (`torch.load(weights_only=True)`, or safetensors), passes the state dict
through the filter of the model family (`FAMILIES`: key renames, position-embedding resampling, ignored heads),
then applies it with one strict / non-strict policy and returns, and logs, a `WeightReport`. Files are read by
`engine.checkpoint.read_checkpoint` (the one reader; sealed checkpoints are verified). A bad file, or one that
does not fit the model, ends as one `DataError` line (`FileNotFoundError` when missing) that names it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from engine.checkpoint import CheckpointError, read_checkpoint, register_state_describer, unwrap
from engine.errors import DataError
from engine.logger import get_logger
from models.momentum import copy_online_to_momentum

Shape = tuple[int, ...]
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class WeightReport:
    """What one load did: tensors loaded, key names remapped, model keys left at their fresh initialisation
    (`missing`), file keys ignored (`unexpected`), keys dropped because their shapes differ (`dropped`:
    key -> (file shape, model shape)), and notes (resampled, grown, ignored, copied)."""

    source: str
    family: str
    loaded: int = 0
    remapped: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, tuple[Shape, Shape]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what was loaded, remapped, dropped, left fresh, ignored, and the notes."""
        parts = [f"{self.source}: {self.loaded} tensors loaded ({self.family})"]
        if self.remapped:
            parts.append(f"{self.remapped} key names remapped")
        if self.dropped:
            parts.append("dropped (shape differs, fresh init kept): " + ", ".join(
                f"{k} {tuple(a)} vs model {tuple(b)}" for k, (a, b) in list(self.dropped.items())[:6]))
        if self.missing:
            parts.append(f"missing (fresh init kept): {key_groups(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected (ignored): {key_groups(self.unexpected)}")
        return "; ".join(parts + self.notes)


def key_groups(keys: list[str], depth: int = 3, limit: int = 6) -> str:
    """'choices.local.basenet.* (90), itm_head.weight' - keys grouped by their first `depth` components."""
    groups = Counter(".".join(k.split(".")[:depth]) for k in keys)
    text = [k if n == 1 and k in keys else f"{k}.* ({n})" for k, n in list(groups.items())[:limit]]
    return ", ".join(text) + (f", ... ({len(keys)} keys in all)" if len(groups) > limit else "")


# ----------------------------------------------------------------------------- reading


def state_dict_of(obj: Any, name: str) -> tuple[dict[str, torch.Tensor], int]:
    """The model state dict inside a checkpoint (`model` / `state_dict` / `module` wrappers) and how many keys
    lost a DDP `module.` prefix."""
    while isinstance(obj, dict) and not _all_tensors(obj):
        inner = next((obj[k] for k in ("model", "state_dict", "module") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj or not _all_tensors(obj):
        what = f"top-level keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{name}: no state dict of tensors in the file ({what})")
    if all(k.startswith("module.") for k in obj):
        return {k[len("module."):]: v for k, v in obj.items()}, len(obj)
    return obj, 0


def _all_tensors(obj: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


@dataclass
class Source:
    """A read weight file: its state dict, the folder's config.json (Hugging Face folders) and its name."""

    name: str
    state: dict[str, torch.Tensor]
    stripped: int = 0  # keys that lost a DDP `module.` prefix
    config: dict[str, Any] | None = None


def read_source(source: str | Path | dict, name: str | None = None) -> Source:
    """A path (file, or a Hugging Face folder with config.json) or an already-read dict, as a `Source`."""
    if isinstance(source, dict):
        name = name or "<state dict>"
        return Source(name, *state_dict_of(source, name))
    path = Path(source)
    name = name or str(path)
    config = None
    if path.is_dir():
        found = [path / f for f in HF_WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise DataError(f"{name}: a folder without {' or '.join(HF_WEIGHT_FILES)}")
        if (path / "config.json").is_file():
            try:
                config = json.loads((path / "config.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{name}: config.json is not valid JSON ({exc})") from None
        path = found[0]
    elif not path.exists():
        raise FileNotFoundError(f"weight file not found: {name}")
    try:
        obj = read_checkpoint(path)
    except DataError as exc:  # also name the source as the caller knows it (e.g. `model.text.init_from=...`)
        raise CheckpointError(str(exc) if name == str(path) else f"{name}: {exc}") from None
    return Source(name, *state_dict_of(obj, name), config=config)


# ----------------------------------------------------------------------------- what a file looks like

SIGNATURES = (  # (family, key prefixes that must all occur, description)
    ("asen", ("choices.global.",), "an ASEN++ checkpoint (choices.global.* keys)"),
    ("asen", ("attrnet.",), "an ASEN++ checkpoint (attrnet.* keys)"),
    ("blip", ("text_decoder.",), "a BLIP checkpoint (text_decoder.* keys)"),
    ("blip", ("ptr_queue",), "a Fashion-FINE-on-BLIP checkpoint (ptr_queue key)"),
    ("fine", ("text_encoder.bert.",), "an ALBEF / FashionSAP checkpoint (text_encoder.bert.* keys)"),
    ("fine", ("visual_encoder.", "text_encoder."), "a Fashion-FINE / ALBEF checkpoint (visual_encoder.*, "
     "text_encoder.* keys)"),
    ("resnet", ("conv1.", "layer1."), "a torchvision ResNet state dict (conv1.*, layer1.* keys)"),
    ("timm_vit", ("patch_embed.", "blocks."), "a timm ViT state dict (patch_embed.*, blocks.* keys)"),
    ("hf_bert", ("bert.embeddings.",), "a Hugging Face BERT state dict (bert.embeddings.* keys)"),
    ("hf_bert", ("embeddings.word_embeddings.", "encoder.layer."), "a Hugging Face BERT state dict "
     "(embeddings.*, encoder.layer.* keys)"),
)


def looks_like(state: dict[str, torch.Tensor]) -> tuple[str | None, str]:
    """(family, description) of a state dict judged by its keys; (None, its first keys) when unknown."""
    for fam, prefixes, text in SIGNATURES:
        if all(any(k.startswith(p) for k in state) for p in prefixes):
            return fam, text
    return None, f"unrecognised keys (first: {', '.join(sorted(state)[:4])})"


register_state_describer(lambda state: looks_like(state)[1])  # for engine.checkpoint's --resume messages
TASK_FAMILIES = ("fine", "blip", "asen")  # the task models: a file judged to be another one's is refused


# ----------------------------------------------------------------------------- family filters

Prepare = Callable[[Source, nn.Module, dict[str, torch.Tensor], WeightReport], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Family:
    """How one kind of file maps onto one kind of model. Key patterns are `fnmatch` patterns of model keys."""

    what: str  # for messages: "a Fashion-FINE / ALBEF checkpoint"
    prepare: Prepare  # file state -> model names (renames, resampling, ignored heads)
    required: tuple[str, ...]  # key prefixes the prepared state must have, else it is another model's file
    optional: tuple[str, ...] = ("*",)  # model keys a non-strict load may leave at their fresh init
    strict_optional: tuple[str, ...] = ()  # ... and a strict one
    droppable: tuple[str, ...] = ()  # keys dropped (fresh init kept) when their shape differs, non-strict only
    linked: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dropped key -> keys dropped with it
    momentum: Literal["none", "if_absent", "after"] = "none"  # copy online -> momentum encoders
    target: str = ""  # attribute of the model the file fills ("text_encoder"); "" = the model itself
    hint: str = ""  # appended to a strict key-set error


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _ignore(state: dict[str, torch.Tensor], prefixes: tuple[str, ...], report: WeightReport, what: str
            ) -> dict[str, torch.Tensor]:
    ignored = [k for k in state if k.startswith(prefixes)]
    if ignored:
        report.notes.append(f"ignored {len(ignored)} keys of {what}")
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _rename(state: dict[str, torch.Tensor], rules: Callable[[str], str], report: WeightReport
            ) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = rules(key)
        report.remapped += new != key
        out[new] = value
    return out


def _layer_norm_names(key: str) -> str:
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def resample_pos_embeds(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], report: WeightReport,
                        keys: tuple[str, ...], name: str) -> None:
    """Position embeddings of another square grid resampled to the model's (bicubic, no antialias; the
    class-token row kept)."""
    for key in keys:
        if key not in state or key not in own or state[key].shape[-1] != own[key].shape[-1] \
                or state[key].shape == own[key].shape:
            continue  # another width: left to the shape check
        have, want = state[key].shape[1] - 1, own[key].shape[1] - 1
        old, new = math.isqrt(have), math.isqrt(want)
        if old * old != have or new * new != want:
            raise DataError(f"{name}: {key} has shape {tuple(state[key].shape)}, the model expects "
                            f"{tuple(own[key].shape)} (position grids that are not square)")
        state[key] = resample_abs_pos_embed(state[key], [new, new], num_prefix_tokens=1, antialias=False)
        report.notes.append(f"{key} resampled {old}x{old} -> {new}x{new}")


POS_EMBEDS = ("visual_encoder.pos_embed", "visual_encoder_m.pos_embed")


def _albef_names(key: str) -> str:
    """ALBEF / Hugging Face names -> ours: no `bert.` level, `cls.predictions` -> `decoder_layer.predictions`,
    `LayerNorm.gamma/beta` -> `weight/bias`."""
    key = key.replace("text_encoder.bert.", "text_encoder.").replace("text_encoder_m.bert.", "text_encoder_m.")
    return _layer_norm_names(key.replace("text_encoder.cls.predictions.", "decoder_layer.predictions."))


def prepare_fine(src: Source, target: nn.Module, own: dict[str, torch.Tensor], report: WeightReport
                 ) -> dict[str, torch.Tensor]:
    """ALBEF-style checkpoints (ours, ALBEF, FashionSAP, Fashion-FINE): published names, pos-embed grid."""
    state = _rename(src.state, _albef_names, report)
    state = _ignore(state, ("text_encoder.cls.", "text_encoder_m.cls.", "text_encoder.pooler.",
                            "text_encoder_m.pooler."), report, "BERT's pooler / next-sentence heads")
    resample_pos_embeds(state, own, report, POS_EMBEDS, src.name)
    return state


WORD_EMBEDDINGS = ("text_encoder.embeddings.word_embeddings.weight", "text_encoder_m.embeddings.word_embeddings.weight")


def prepare_blip(src: Source, target: nn.Module, own: dict[str, torch.Tensor], report: WeightReport
                 ) -> dict[str, torch.Tensor]:
    """BLIP `model_base.pth` and Fashion-FINE-on-BLIP files: the captioning decoder ignored, pos-embed
    224 -> 384, word-embedding rows added for registered sign tokens (also strict: evaluation queries carry
    no sign, so the added rows are never read)."""
    state = _ignore(src.state, ("text_decoder.",), report,
                    "BLIP's text decoder (text_decoder.*), which the retrieval model does not have")
    resample_pos_embeds(state, own, report, POS_EMBEDS, src.name)
    for key in WORD_EMBEDDINGS:
        if key in state and key in own:
            have, want = state[key], own[key]
            if have.shape[1:] == want.shape[1:] and have.shape[0] < want.shape[0]:
                grown = want.detach().clone()
                grown[: have.shape[0]] = have.to(grown.dtype)
                state[key] = grown
                report.notes.append(f"{key} grown {have.shape[0]} -> {want.shape[0]} rows (new rows keep their "
                                    "fresh init)")
    return state


_SHARED = re.compile(r"^choices\.(global|local)\.attrnet\.(.+)$")


def asen_from_published(state: dict[str, torch.Tensor], name: str = "<state dict>"
                        ) -> tuple[dict[str, torch.Tensor], int]:
    """Published ASEN++ layout -> ours: the attribute table, registered under both branches there
    (`choices.{global,local}.attrnet.*`), is one `attrnet.*` entry here. Returns the state and the renamed count."""
    out: dict[str, torch.Tensor] = {}
    shared: dict[str, dict[str, torch.Tensor]] = {}
    renamed = 0
    for key, value in state.items():
        match = _SHARED.match(key)
        if match:
            shared.setdefault(match.group(2), {})[match.group(1)] = value
            renamed += 1
        else:
            out[key] = value
    for key, copies in shared.items():
        ref = copies.get("global", next(iter(copies.values())))
        for level, value in copies.items():
            if value.shape != ref.shape or (value.device.type != "meta" and not torch.equal(value, ref)):
                raise DataError(f"{name}: choices.{level}.attrnet.{key} differs from the global copy; the "
                                "attribute table is shared and must be identical")
        out[f"attrnet.{key}"] = ref
    return out, renamed


def prepare_asen(src: Source, target: nn.Module, own: dict[str, torch.Tensor], report: WeightReport
                 ) -> dict[str, torch.Tensor]:
    state, report.remapped = asen_from_published(src.state, src.name)
    return state


def prepare_resnet(src: Source, target: nn.Module, own: dict[str, torch.Tensor], report: WeightReport
                   ) -> dict[str, torch.Tensor]:
    """torchvision ImageNet state dict -> the trunk cut after layer3: `layer4.*` / `fc.*` ignored."""
    return _ignore(src.state, ("layer4.", "fc."), report, "layer4 / fc, which the truncated trunk does not have")


def _check_sizes(name: str, section: str, pairs: list[tuple[str, Any, Any]]) -> None:
    wrong = [f"{label} {ours} vs {theirs}" for label, ours, theirs in pairs if theirs is not None and ours != theirs]
    if wrong:
        raise DataError(f"{name}: does not fit {section} (ours vs the file's): {', '.join(wrong)}")


def prepare_hf_bert(src: Source, target: nn.Module, own: dict[str, torch.Tensor], report: WeightReport
                    ) -> dict[str, torch.Tensor]:
    """A Hugging Face BERT (folder with config.json) -> our text encoder: BERT layer i -> our layer i (the
    fusion layers too, as the published ALBEF initialisation), cross-attention keeps its fresh init."""
    cfg, hf = getattr(target, "cfg", None), src.config or {}
    if cfg is not None:
        vocab = own["embeddings.word_embeddings.weight"].shape[0]
        _check_sizes(src.name, "model.text", [
            ("hidden", cfg.hidden, hf.get("hidden_size")), ("layers", cfg.layers, hf.get("num_hidden_layers")),
            ("heads", cfg.heads, hf.get("num_attention_heads")),
            ("intermediate", cfg.intermediate, hf.get("intermediate_size")),
            ("max_positions", cfg.max_positions, hf.get("max_position_embeddings")),
            ("type_vocab", cfg.type_vocab, hf.get("type_vocab_size")), ("vocabulary", vocab, hf.get("vocab_size")),
            ("activation", "gelu", hf.get("hidden_act")),
            ("position embeddings", "absolute", hf.get("position_embedding_type"))])
    state = _ignore(src.state, ("cls.", "pooler.", "bert.pooler."), report, "BERT's pooler / pretraining heads")
    return _rename(state, lambda k: _layer_norm_names(k.removeprefix("bert.")), report)


def prepare_timm_vit(src: Source, target: nn.Module, own: dict[str, torch.Tensor], report: WeightReport
                     ) -> dict[str, torch.Tensor]:
    """A timm / DeiT ViT checkpoint -> our image encoder: classifier head ignored, pos-embed resampled to
    the configured image size. (The head count cannot be read from the weights; it must match model.vision.)"""
    if "dist_token" in src.state:
        raise DataError(f"{src.name}: a distilled DeiT checkpoint (dist_token); give a plain ViT / DeiT one")
    state = _ignore(src.state, ("head.", "head_dist.", "fc_norm."), report, "the classifier head")
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    patch = state.get("patch_embed.proj.weight")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if hasattr(target, "blocks") and "cls_token" in state:
        _check_sizes(src.name, "model.vision", [
            ("width", own["cls_token"].shape[-1], state["cls_token"].shape[-1]),
            ("depth", len(target.blocks), len(blocks)),
            ("patch_size", own["patch_embed.proj.weight"].shape[-1], None if patch is None else patch.shape[-1]),
            ("mlp hidden", own["blocks.0.mlp.fc1.weight"].shape[0], None if fc1 is None else fc1.shape[0])])
    resample_pos_embeds(state, own, report, ("pos_embed",), src.name)
    return state


INIT_ALLOW_MISSING = (  # what a pretrained starting point of an ALBEF-style model may lack (fresh init kept)
    "W_v", "att_layer_v.", "unigram_conv.", "bigram_conv.", "trigram_conv.", "decoder_layer.",
    "replace_predict_layer.", "combine_vision_proj", "combine_text_proj", "itm_head.", "idx_queue",
    "image_queue", "text_queue", "fusion_queue", "queue_ptr", "img_queue_ptr", "fusion_queue_ptr",
    "image_idx_queue", "fusion_idx_queue")
QUEUES = ("image_queue", "text_queue", "idx_queue", "fusion_queue", "image_idx_queue", "fusion_idx_queue")
# A write pointer is meaningless for a queue of another length: it is dropped with its queue (writing restarts at 0).
QUEUE_POINTERS = {"image_queue": ("queue_ptr", "img_queue_ptr"), "text_queue": ("queue_ptr",),
                  "idx_queue": ("queue_ptr",), "fusion_queue": ("fusion_queue_ptr",),
                  "image_idx_queue": ("img_queue_ptr",), "fusion_idx_queue": ("fusion_queue_ptr",)}
ENCODERS = ("visual_encoder.", "text_encoder.embeddings.", "text_encoder.encoder.")


def _prefixes(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{n}*" for n in names)


FAMILIES: dict[str, Family] = {
    "fine": Family("a Fashion-FINE / ALBEF checkpoint", prepare_fine, ENCODERS,
                   optional=_prefixes(INIT_ALLOW_MISSING),
                   strict_optional=_prefixes(("idx_queue", "image_idx_queue", "fusion_idx_queue", *QUEUES)),
                   droppable=QUEUES, linked=QUEUE_POINTERS, momentum="if_absent"),
    "blip": Family("a BLIP / Fashion-FINE-on-BLIP checkpoint", prepare_blip, ENCODERS, droppable=("*",),
                   linked={q: ("ptr_queue",) for q in QUEUES}, momentum="if_absent"),
    "asen": Family("an ASEN++ checkpoint", prepare_asen, ("attrnet.", "choices.global."),
                   hint=" (pass --allow-partial to evaluate anyway)"),
    "resnet": Family("a torchvision ResNet state dict", prepare_resnet, ("conv1.", "layer1."),
                     optional=(), strict_optional=("*num_batches_tracked",)),  # old releases lack them
    "hf_bert": Family("a Hugging Face BERT", prepare_hf_bert, ("embeddings.word_embeddings.", "encoder.layer."),
                      optional=("encoder.layer.*.crossattention.*", "embeddings.position_ids"),
                      momentum="after", target="text_encoder"),
    "timm_vit": Family("a timm / DeiT ViT checkpoint", prepare_timm_vit, ("patch_embed.", "blocks."),
                       optional=(), momentum="after", target="visual_encoder"),
}


# ----------------------------------------------------------------------------- the shared apply step


def _is_momentum_key(key: str) -> bool:
    return key.split(".", 1)[0].endswith("_m")


def _listing(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _require_loadable(name: str, fam: Family, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                      dropped: dict[str, tuple[Shape, Shape]], looks: str) -> None:
    """After shape drops, each of the family's required key groups must still load at least one tensor (else the
    file is another model's, or one of another size)."""
    for prefix in fam.required:
        if any(k.startswith(prefix) and k in own for k in state):
            continue
        lost = [k for k in dropped if k.startswith(prefix)]
        if lost:
            (a, b) = dropped[lost[0]]
            raise DataError(f"{name}: none of its {prefix}* weights fits this model ({len(lost)} of another shape, "
                            f"first: {lost[0]} {a} vs model {b}); a different config or vocabulary?")
        raise DataError(f"{name}: none of its {prefix}* weights is a weight of this model (not {fam.what}?); "
                        f"it looks like {looks}")


def load_weights(model: nn.Module, source: str | Path | dict, *, family: str, strict: bool = False,
                 source_name: str | None = None) -> WeightReport:
    """Load a weight file (or an already-read state dict / checkpoint dict) into `model` through the filter of
    `family` (a key of `FAMILIES`).

    Non-strict (initialisation): keys whose shapes differ are dropped where the family allows it (else an
    error), model keys the file lacks keep their fresh init where the family allows it (else an error), file
    keys the model lacks are ignored. Strict (evaluation): every model key must come from the file (bar the
    family's training-only buffers) with its shape, and nothing else may be there. Either way a file of
    another model is an error saying what the file looks like. The report is logged and returned.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown weight family {family!r} (known: {', '.join(FAMILIES)})")
    fam = FAMILIES[family]
    src = read_source(source, source_name)
    module = unwrap(model)
    target = getattr(module, fam.target, module) if fam.target else module
    report = WeightReport(src.name, family, remapped=src.stripped)
    if src.stripped:
        report.notes.append("removed the DDP `module.` prefix of every key")
    own = target.state_dict()
    guess, looks = looks_like(src.state)
    state = fam.prepare(src, target, own, report)
    absent = [p for p in fam.required if not any(k.startswith(p) for k in state)]
    if absent:
        raise DataError(f"{src.name}: not {fam.what} (no {', '.join(p + '*' for p in absent)} keys); "
                        f"it looks like {looks}")
    if family in TASK_FAMILIES and guess in TASK_FAMILIES and guess != family:
        raise DataError(f"{src.name}: not {fam.what}; the file looks like {looks}")
    other = f"; the file looks like {looks}" if guess not in (family, None) else ""
    for key in [k for k in state if k in own and state[k].shape != own[k].shape]:
        shapes = (tuple(state[key].shape), tuple(own[key].shape))
        if strict or not _matches(key, fam.droppable):
            raise DataError(f"{src.name}: {key} has shape {shapes[0]}, the model expects {shapes[1]} "
                            f"(a different config or vocabulary?){other}")
        report.dropped[key] = shapes
        del state[key]
    for key in list(report.dropped):
        for linked in fam.linked.get(key, ()):
            if linked in state and linked in own and linked not in report.dropped:
                report.dropped[linked] = (tuple(state.pop(linked).shape), tuple(own[linked].shape))
                report.notes.append(f"{linked} not loaded: its queue was dropped, writing restarts at 0")
    _require_loadable(src.name, fam, state, own, report.dropped, looks)
    has_momentum = fam.momentum != "if_absent" or any(k.startswith("visual_encoder_m.") for k in state)
    report.unexpected = [k for k in state if k not in own]
    report.missing = [k for k in own if k not in state and k not in report.dropped
                      and (has_momentum or not _is_momentum_key(k))]
    bad = [k for k in report.missing if not _matches(k, fam.strict_optional if strict else fam.optional)]
    if strict and not has_momentum:
        bad.append("<momentum encoders (*_m)>")
    if strict and (bad or report.unexpected):
        raise DataError(f"{src.name}: the file does not match this model (strict load): missing "
                        f"[{_listing(bad)}], unexpected [{_listing(report.unexpected)}]{other}{fam.hint}")
    if bad:
        raise DataError(f"{src.name}: model weights missing from the file: {_listing(bad)}{other}")
    loadable = {k: v for k, v in state.items() if k in own}
    if not loadable:
        raise DataError(f"{src.name}: none of its {len(src.state)} tensors is a weight of this model (not "
                        f"{fam.what}); it looks like {looks}")
    target.load_state_dict(loadable, strict=False)
    report.loaded = len(loadable)
    if (fam.momentum == "after" or not has_momentum) and hasattr(module, "momentum_pairs"):
        copy_online_to_momentum(module.momentum_pairs)
        report.notes.append("momentum encoders copied from the online encoders")
    get_logger().info(report.summary())
    return report


# ----------------------------------------------------------------------------- public backbones


def init_backbones(model: nn.Module, model_cfg: Any = None) -> list[WeightReport]:
    """Initialise the encoders from the public backbones the model config names (`model.text.init_from`: a
    Hugging Face BERT folder; `model.vision.init_from`: a timm ViT file; ASEN++ `<BRANCH>.BACKBONE.WEIGHTS`:
    torchvision ResNet files). `model_cfg` defaults to the model's own `cfg`. Returns the reports (empty:
    nothing named)."""
    module = unwrap(model)
    cfg = model_cfg if model_cfg is not None else getattr(module, "cfg", None)
    reports = []
    for section, family in (("text", "hf_bert"), ("vision", "timm_vit")):
        path = getattr(getattr(cfg, section, None), "init_from", None)
        if path:
            reports.append(load_weights(module, path, family=family,
                                        source_name=f"model.{section}.init_from={path}"))
    for level, branch in getattr(module, "choices", {}).items():  # ASEN++ trunks
        bcfg = getattr(cfg, level.upper()).BACKBONE
        if bcfg.WEIGHTS:
            reports.append(load_weights(branch.basenet, bcfg.WEIGHTS, family="resnet", strict=True,
                                        source_name=f"MODEL.{level.upper()}.BACKBONE.WEIGHTS={bcfg.WEIGHTS}"))
        else:
            get_logger().warning("%s backbone %s: random initialisation (MODEL.%s.BACKBONE.WEIGHTS is empty)",
                                 level, bcfg.NAME, level.upper())
    return reports


def find_backbone_weights(folder: str | Path, name: str) -> Path:
    """`<name>.pth` or the torchvision release file `<name>-<hash>.pth` inside `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--backbone-weights {folder}: not a folder (give a folder, or global=FILE / local=FILE)")
    found = sorted(folder.glob(f"{name}.pth")) + sorted(folder.glob(f"{name}-*.pth"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} candidate"
        raise DataError(f"{folder}: {what} weight file(s) for {name} (expected {name}.pth or {name}-<hash>.pth, "
                        "torchvision's ImageNet release)")
    return found[0]


def apply_backbone_weights(cfg: Any, items: list[str] | None) -> None:
    """`--backbone-weights DIR | global=FILE | local=FILE ...` -> the ASEN++ MODEL.<BRANCH>.BACKBONE.WEIGHTS."""
    branches = {"global": cfg.GLOBAL.BACKBONE, "local": cfg.LOCAL.BACKBONE}
    for item in items or []:
        level, sep, path = item.partition("=")
        if sep:
            if level not in branches:
                raise DataError(f"--backbone-weights {item}: use global=FILE or local=FILE")
            branches[level].WEIGHTS = path
            continue
        branches["global"].WEIGHTS = str(find_backbone_weights(item, branches["global"].NAME))
        if cfg.LOCAL.ENABLE:
            branches["local"].WEIGHTS = str(find_backbone_weights(item, branches["local"].NAME))

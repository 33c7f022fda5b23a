"""Export a trained model's encoders as ONNX graphs, with a JSON sidecar describing their inputs and preprocessing.

One graph per embedding the evaluation ranks: `image_encoder.onnx` and `text_encoder.onnx` (CMR, BLIP),
`image_encoder.onnx` and `query_encoder.onnx` (TGIR: modification text + reference image), `asen_encoder.onnx`
(ASEN++: image + attribute index; with the local branch also the uint8 original and its size, from which the
graph crops the local view as the model does, inference/export_crop.py). Each graph outputs `embedding`,
exactly what the PyTorch encode method returns (unit vectors, float32), with a dynamic batch axis. The graphs
are traced by the TorchScript exporter (`torch.onnx.export(dynamo=False)`): about 5x faster than the dynamo
exporter here and it handles the dynamic axes. `verify_export` runs them in onnxruntime against PyTorch.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.atomic import atomic_write, write_json
from engine.config import ConfigError
from inference.export_crop import local_view

FAMILIES = ("fine", "fine_tgir", "blip", "asen")
OPSET = 17  # fused attention (scaled_dot_product_attention) exports from opset 14
SIDECAR = "preprocessing.json"
FILES = {"image": "image_encoder.onnx", "text": "text_encoder.onnx", "query": "query_encoder.onnx",
         "asen": "asen_encoder.onnx"}
ROLES = {"fine": ("image", "text"), "blip": ("image", "text"), "fine_tgir": ("image", "query"), "asen": ("asen",)}
OUTPUT = "embedding"
EMBEDS = {"image": "images (the catalogue / gallery side)", "text": "texts (captions or text queries)",
          "query": "queries: a modification text with its reference image", "asen": "images under one attribute"}


def model_family(model: nn.Module) -> str:
    """The export family of a task model (its class decides)."""
    from models.asen import ASENet
    from models.fine_blip import FineBlipRetrieval
    from models.fine_retrieval import FineRetrievalModel
    from models.fine_tgir import FineTGIRModel

    for cls, family in ((FineBlipRetrieval, "blip"), (FineTGIRModel, "fine_tgir"), (FineRetrievalModel, "fine"),
                        (ASENet, "asen")):
        if isinstance(model, cls):
            return family
    raise ConfigError(f"cannot export a {type(model).__name__}: export takes the retrieval models "
                      f"({', '.join(FAMILIES)})")


def _family(model: nn.Module, family: str | None) -> str:
    found = model_family(model)
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"unknown export family {family!r} (known: {', '.join(FAMILIES)})")
    if family is not None and family != found:
        raise ConfigError(f"export family {family!r} does not match the model, a {type(model).__name__} ({found!r})")
    return found


# ----------------------------------------------------------------------------- the graphs


class ImageEncoder(nn.Module):
    """`encode_image(image)`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image)


class TextEncoder(nn.Module):
    """`encode_text(input_ids, attention_mask, has_sign)` with `has_sign` fixed."""

    def __init__(self, model: nn.Module, has_sign: bool = False) -> None:
        super().__init__()
        self.model, self.has_sign = model, has_sign

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.has_sign:
            return self.model.encode_text(input_ids, attention_mask, True)
        return self.model.encode_text(input_ids, attention_mask)


class QueryEncoder(nn.Module):
    """`encode_query(input_ids, attention_mask, ref_image)`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, ref_image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_query(input_ids, attention_mask, ref_image)


class AsenEncoder(nn.Module):
    """`ASENet.encode(batch)["fused"]`: the global embedding, and with the local branch the crop of the original
    chosen by the global attention map, its local embedding and the beta-weighted concatenation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, attr: torch.Tensor, original: torch.Tensor | None = None,
                size: torch.Tensor | None = None) -> torch.Tensor:
        m = self.model
        g, attn = m.embed(image, attr, "global")
        g = F.normalize(g.float(), dim=1)
        if not m.has_local:
            return g
        views = local_view(attn, original, size, m.global_size, m.threshold, m.local_size, m.pixel_mean,
                           m.pixel_std)
        loc = F.normalize(m.embed(views, attr, "local")[0].float(), dim=1)
        return torch.cat([math.sqrt(m.beta) * g, math.sqrt(1 - m.beta) * loc], dim=1)


@dataclass
class InputSpec:
    """One graph input: name, shape (axis names for the dynamic axes), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: torch.dtype

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}


def _image_res(model: nn.Module) -> int:
    return int(model.cfg.vision.image_res)


def input_specs(model: nn.Module, family: str, role: str) -> list[InputSpec]:
    """The inputs of one encoder graph."""
    text = [InputSpec("input_ids", ("batch", "sequence"), torch.int64),
            InputSpec("attention_mask", ("batch", "sequence"), torch.int64)]
    if role in ("image", "query"):
        res = _image_res(model)
        image = InputSpec("ref_image" if role == "query" else "image", ("batch", 3, res, res), torch.float32)
        return [*text, image] if role == "query" else [image]
    if role == "text":
        return text
    g = model.global_size
    specs = [InputSpec("image", ("batch", 3, g, g), torch.float32), InputSpec("attr", ("batch",), torch.int64)]
    if model.has_local:
        specs += [InputSpec("original", ("batch", 3, "height", "width"), torch.uint8),
                  InputSpec("size", ("batch", 2), torch.int64)]
    return specs


def _graph(model: nn.Module, role: str, has_sign: bool) -> nn.Module:
    if role == "image":
        return ImageEncoder(model)
    if role == "text":
        return TextEncoder(model, has_sign)
    return QueryEncoder(model) if role == "query" else AsenEncoder(model)


def _reference(model: nn.Module, role: str, has_sign: bool) -> Callable[..., torch.Tensor]:
    """The PyTorch method the graph of `role` must reproduce, taking the graph's inputs by name."""
    if role == "asen":
        return lambda **batch: model.encode(batch)["fused"]
    if role == "text":
        return lambda input_ids, attention_mask: model.encode_text(input_ids, attention_mask, has_sign)
    return ImageEncoder(model) if role == "image" else QueryEncoder(model)


def sample_inputs(model: nn.Module, family: str | None = None, *, batch: int = 2, length: int = 12,
                  original_side: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the right shapes and ranges for every graph of the model (on its device); ASEN++
    originals are portrait, landscape and square with the long side `original_side` (default 1.25 x the
    global input)."""
    family = _family(model, family)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    if family == "asen":
        size = model.global_size
        out["image"] = torch.randn(batch, 3, size, size, generator=g)
        out["attr"] = torch.randint(0, model.attrnet.attr_embedding.num_embeddings, (batch,), generator=g)
        if model.has_local:
            side = original_side or size * 5 // 4
            sizes = torch.tensor([[side, side * 4 // 5], [side * 4 // 5, side], [side, side]])[torch.arange(batch) % 3]
            originals = torch.zeros(batch, 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()), dtype=torch.uint8)
            for i, (h, w) in enumerate(sizes.tolist()):
                originals[i, :, :h, :w] = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
            out["original"], out["size"] = originals, sizes
        return {k: v.to(device) for k, v in out.items()}
    vocab = model.text_encoder.embeddings.word_embeddings.num_embeddings
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    out["input_ids"] = torch.randint(1, vocab, (batch, length), generator=g) * mask
    out["attention_mask"] = mask
    res = _image_res(model)
    out["ref_image" if family == "fine_tgir" else "image"] = torch.randn(batch, 3, res, res, generator=g)
    if family == "fine_tgir":
        out["image"] = torch.randn(batch, 3, res, res, generator=g)
    return {k: v.to(device) for k, v in out.items()}


# ----------------------------------------------------------------------------- export


def _require(module: str, purpose: str) -> Any:
    """Import an optional package or fail in one line naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModuleNotFoundError(f"{purpose} needs the {module} package (pinned in requirements.txt): "
                                  f"pip install {module}") from e


def _out_folder(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"export folder {out_dir} is a file: give a folder (new or holding a previous export)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise ConfigError(f"cannot create the export folder {out_dir}: a part of its path is a file") from e
    return out_dir


def _check_float32(model: nn.Module) -> None:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        raise ConfigError(f"export needs float32 weights, the model holds {sorted(map(str, dtypes))}: "
                          "load it with precision fp32")


def _trace(module: nn.Module, specs: list[InputSpec], inputs: Mapping[str, torch.Tensor], opset: int) -> bytes:
    """The ONNX bytes of `module` traced on `inputs`. The exporter's warnings are silenced: its deprecation notice
    and timm's input-size checks on the fixed image axes, which it reports as values frozen into the graph;
    `verify_export` on another batch (size) is what shows that a graph holds for other inputs."""
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise ValueError(f"example inputs lack {', '.join(missing)}")
    args = tuple(inputs[s.name] for s in specs)
    dynamic = {s.name: {i: a for i, a in enumerate(s.shape) if isinstance(a, str)} for s in specs}
    dynamic[OUTPUT] = {0: "batch"}
    buf = io.BytesIO()
    # the exporter puts the module back in the mode it found it in: eval, so the model stays in eval mode
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, input_names=[s.name for s in specs], output_names=[OUTPUT],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return buf.getvalue()


def export_encoders(model: nn.Module, family: str | None, out_dir: Path, preprocessing: Mapping[str, Any], *,
                    example_inputs: Mapping[str, torch.Tensor] | None = None, has_sign: bool = False,
                    opset: int = OPSET) -> dict[str, Path]:
    """Write the model's encoder graphs and `preprocessing.json` (the caller's `preprocessing` plus every
    graph's file, inputs, output and the opset) atomically into `out_dir`.

    `family`: one of FAMILIES or None (from the model's class). `example_inputs`: tracing inputs by input name
    (default: random ones from the model's sizes, `sample_inputs`). `has_sign`: the text encoder pools the
    words after a sign at position 1 (BLIP stage 1 texts). Returns {role: path} with the roles `image`,
    `text`, `query`, `asen` present and `preprocessing` (the sidecar).
    """
    family = _family(model, family)
    _require("onnx", "ONNX export")
    out_dir = _out_folder(out_dir)
    _check_float32(model)
    inputs = dict(example_inputs) if example_inputs is not None else sample_inputs(model, family)
    was_training = model.training
    model.eval()
    encoders: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    try:
        for role in ROLES[family]:
            specs = input_specs(model, family, role)
            blob = _trace(_graph(model, role, has_sign), specs, inputs, opset)
            with torch.no_grad():
                emb = _reference(model, role, has_sign)(**{s.name: inputs[s.name] for s in specs})
            path = out_dir / FILES[role]
            with atomic_write(path, "wb") as f:
                f.write(blob)
            paths[role] = path
            encoders[role] = {"file": path.name, "inputs": [s.describe() for s in specs],
                              "outputs": [{"name": OUTPUT, "shape": ["batch", int(emb.shape[1])], "dtype": "float32"}],
                              "l2_normalized": bool((emb.norm(dim=1) - 1).abs().max() < 1e-4),
                              "embeds": EMBEDS[role]}
            if role == "text":
                encoders[role]["has_sign"] = has_sign
    finally:
        model.train(was_training)
    sidecar = {"family": family, "opset": opset, "exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}",
               "encoders": encoders, "preprocessing": dict(preprocessing)}
    if family == "asen":
        sidecar["asen"] = {"num_attributes": model.attrnet.attr_embedding.num_embeddings, "local": model.has_local,
                           "beta": model.beta, "threshold": model.threshold, "local_size": model.local_size}
    paths["preprocessing"] = write_json(out_dir / SIDECAR, sidecar)
    for role, name in FILES.items():  # a previous export's graph of another family would be misleading
        if role not in encoders:
            (out_dir / name).unlink(missing_ok=True)
    return paths


# ----------------------------------------------------------------------------- verification


def verify_export(paths: Mapping[str, Path], model: nn.Module, family: str | None,
                  inputs: Mapping[str, torch.Tensor]) -> float:
    """Largest absolute difference between every exported graph run in onnxruntime (CPU) and the PyTorch
    encode method on `inputs` (by input name; one batch for every graph)."""
    ort = _require("onnxruntime", "verifying an ONNX export")
    family = _family(model, family)
    sidecar = json.loads(Path(paths["preprocessing"]).read_text(encoding="utf-8"))
    if sidecar["family"] != family:
        raise ConfigError(f"{paths['preprocessing']} describes a {sidecar['family']!r} export, not {family!r}")
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for role, entry in sidecar["encoders"].items():
            names = [i["name"] for i in entry["inputs"]]
            missing = [n for n in names if n not in inputs]
            if missing:
                raise ValueError(f"inputs for the {role} encoder lack {', '.join(missing)}")
            session = ort.InferenceSession(str(paths[role]), providers=["CPUExecutionProvider"])
            got = session.run([OUTPUT], {n: inputs[n].detach().cpu().numpy() for n in names})[0]
            with torch.no_grad():
                want = _reference(model, role, entry.get("has_sign", False))(**{n: inputs[n] for n in names})
            want = want.detach().float().cpu()
            if tuple(got.shape) != tuple(want.shape):
                raise RuntimeError(f"{entry['file']} gives shape {got.shape}, PyTorch {tuple(want.shape)}")
            worst = max(worst, float((torch.from_numpy(got) - want).abs().max()))
    finally:
        model.train(was_training)
    return worst

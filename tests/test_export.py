"""ONNX export of the encoders (inference/export.py): every family's graphs, run in onnxruntime on another
batch size (and text length, and canvas size), match the PyTorch encode methods; the sidecar describes them;
the traceable crop equals the model's; bad output folders fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models.asen_crop as asen_crop
from engine.config import ConfigError
from inference import export_crop
from inference.export import FILES, OPSET, SIDECAR, export_encoders, sample_inputs, verify_export
from models.fine_retrieval import FineRetrievalModel
from models.fine_tgir import FineTGIRModel
from tasks.asen import build_model as build_asen
from tests.test_asen_model import tiny as tiny_asen_config
from tests.test_blip_model import make_model as tiny_blip
from tests.test_fine_models import tiny as tiny_fine

TOLERANCE = 1e-4
PREPROCESSING = {"resize": 16, "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28], "vocab": "vocab.txt",
                 "max_length": 12, "text_prefix": "", "sign_prefix": None}
MODELS = {"fine": lambda: tiny_fine(FineRetrievalModel), "fine_tgir": lambda: tiny_fine(FineTGIRModel),
          "blip": tiny_blip, "asen_s1": lambda: build_asen(tiny_asen_config(1), 3),
          "asen_s2": lambda: build_asen(tiny_asen_config(2), 3)}
ROLES = {"fine": {"image", "text"}, "fine_tgir": {"image", "query"}, "blip": {"image", "text"},
         "asen_s1": {"asen"}, "asen_s2": {"asen"}}


def other_batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Inputs of another batch size than the traced one (2), another text length (12) and a larger canvas."""
    inputs = sample_inputs(model, batch=5, length=7, seed=3)
    if "original" in inputs:
        inputs["original"] = F.pad(inputs["original"], (0, 9, 0, 4))  # zero padding past every image
    return inputs


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_graphs_match_pytorch_on_another_batch(name: str, tmp_path: Path):
    model = MODELS[name]()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # ASEN++ traced on small originals (short crops) and run on larger ones: no crop size frozen in the graph
    example = sample_inputs(model, original_side=40) if name == "asen_s2" else None
    paths = export_encoders(model, None, tmp_path / "onnx", PREPROCESSING, example_inputs=example)
    assert set(paths) == ROLES[name] | {"preprocessing"}
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(p.name for p in paths.values())
    assert model.training  # mode restored, weights and buffers (BatchNorm statistics) untouched
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    inputs = other_batch(model)
    diff = verify_export(paths, model, None, inputs)
    assert diff < TOLERANCE, f"{name}: ONNX and PyTorch differ by {diff}"

    sidecar = json.loads(paths["preprocessing"].read_text())
    family = name.split("_s")[0]
    assert sidecar["family"] == family and sidecar["opset"] == OPSET >= 14
    assert sidecar["preprocessing"] == PREPROCESSING
    for role, entry in sidecar["encoders"].items():
        assert entry["file"] == FILES[role] == paths[role].name
        assert entry["l2_normalized"] is True
        assert all(i["shape"][0] == "batch" for i in entry["inputs"])
        assert entry["outputs"] == [{"name": "embedding", "shape": ["batch", entry["outputs"][0]["shape"][1]],
                                     "dtype": "float32"}]
    names = {role: [(i["name"], i["dtype"]) for i in e["inputs"]] for role, e in sidecar["encoders"].items()}
    if family in ("fine", "blip"):
        assert names["text"] == [("input_ids", "int64"), ("attention_mask", "int64")]
        assert sidecar["encoders"]["text"]["has_sign"] is False
    if family == "fine_tgir":
        assert [n for n, _ in names["query"]] == ["input_ids", "attention_mask", "ref_image"]
    if name == "asen_s2":
        assert names["asen"] == [("image", "float32"), ("attr", "int64"), ("original", "uint8"), ("size", "int64")]
        assert sidecar["encoders"]["asen"]["inputs"][2]["shape"] == ["batch", 3, "height", "width"]
        assert sidecar["asen"]["local"] is True
        assert sidecar["encoders"]["asen"]["outputs"][0]["shape"][1] == 2 * model.cfg.EMBED_SIZE


def test_sign_texts_and_a_changed_model_are_caught(tmp_path: Path):
    """The BLIP stage-1 text layout (sign at position 1) exports too; verify_export sees a graph that no longer
    matches the model."""
    model = tiny_blip()
    paths = export_encoders(model, "blip", tmp_path, PREPROCESSING, has_sign=True)
    assert json.loads(paths["preprocessing"].read_text())["encoders"]["text"]["has_sign"] is True
    inputs = other_batch(model)
    assert verify_export(paths, model, "blip", inputs) < TOLERANCE
    with torch.no_grad():
        model.text_proj.bias.add_(0.5)
    assert verify_export(paths, model, "blip", inputs) > 1e-3


def test_traceable_crop_equals_the_model_crop():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[100, 80], [80, 100], [90, 90], [61, 97], [100, 100]])
    originals = torch.randint(0, 256, (5, 3, 104, 109), generator=g, dtype=torch.uint8)
    maps = torch.rand(5, 4, 4, generator=g) ** 4
    maps[4] = 0.25  # constant map: the whole view
    boxes, fallback = asen_crop.crop_boxes(maps, sizes, 64, 0.4)
    assert fallback.tolist() == [False] * 4 + [True]
    for extent, start, length in ((sizes[:, 1], boxes[:, 0], boxes[:, 2]), (sizes[:, 0], boxes[:, 1], boxes[:, 2])):
        want = asen_crop.resample_weights(start, length, extent, 32, 109)
        assert torch.allclose(export_crop.resample_weights(start, length, extent, 32, 109), want, atol=1e-7, rtol=0)
    want = asen_crop.crop_resize(originals, sizes, boxes, 32, [0.5, 0.4, 0.3], [0.2, 0.3, 0.25])
    got = export_crop.local_view(maps, originals, sizes, 64, 0.4, 32, [0.5, 0.4, 0.3], [0.2, 0.3, 0.25])
    assert torch.equal(got, want)


def test_bad_output_folder_or_family_is_one_line(tmp_path: Path):
    model = tiny_fine(FineRetrievalModel)
    taken = tmp_path / "taken"
    taken.write_text("x")
    for out in (taken, taken / "sub"):
        with pytest.raises(ConfigError, match="file") as err:
            export_encoders(model, "fine", out, PREPROCESSING)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not match the model") as err:
        export_encoders(model, "asen", tmp_path / "out", PREPROCESSING)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="unknown export family"):
        export_encoders(model, "clip", tmp_path / "out", PREPROCESSING)
    assert taken.read_text() == "x"


def test_reexport_of_another_family_leaves_no_stale_graph(tmp_path: Path):
    export_encoders(tiny_fine(FineRetrievalModel), "fine", tmp_path, PREPROCESSING)
    assert (tmp_path / FILES["text"]).is_file()
    paths = export_encoders(tiny_fine(FineTGIRModel), "fine_tgir", tmp_path, PREPROCESSING)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([FILES["image"], FILES["query"], SIDECAR])
    assert set(json.loads(paths["preprocessing"].read_text())["encoders"]) == {"image", "query"}

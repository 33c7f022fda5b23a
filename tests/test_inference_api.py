"""Using a trained model (inference.load_model, the encoders, search.py): checkpoints describe their model, the
API's embeddings are the very vectors evaluation ranks (its metrics reproduced exactly), the index + query round
trip retrieves at the evaluation's rate, and bad input is one line naming the file or value."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asen_main
import retrieval
import search
import tgir
from engine.config import ConfigError
from engine.errors import DataError
from evaluation.cmr import CMROptions, evaluate_cmr
from inference.load import load_model
from tests.asen_helpers import ROOT, synthetic_asen, tiny_args

pytestmark = pytest.mark.usefixtures("restore_torch_globals")  # tests/conftest.py

FAST = ["model.vision.image_res=32", "runtime.num_workers=0", "runtime.cpu_threads=1", "train.epochs=1",
        "train.progress_bar=false", "train.log_every=1000"]
ERRORS = (ConfigError, DataError, FileNotFoundError)  # what entry points turn into one line and exit status 2


@pytest.fixture(scope="module")
def cmr_run(synthetic_root, tmp_path_factory) -> Path:
    """A tiny CMR run (full protocol) whose tokenizer folder is removed afterwards: the checkpoint must suffice."""
    out = tmp_path_factory.mktemp("cmr_run")
    tokenizer = out / "tokenizer"
    shutil.copytree(synthetic_root / "tokenizer", tokenizer)
    assert retrieval.main(["--config", "configs/retrieval_tiny.yaml", "--output_dir", str(out / "run"), "--set",
                           f"data.root={synthetic_root / 'fashiongen'}", f"data.tokenizer={tokenizer}",
                           "data.max_words=32", "data.heldout_products=20", "eval.protocol=full", *FAST]) == 0
    shutil.rmtree(tokenizer)
    return out / "run"


def test_checkpoint_carries_its_model_card(cmr_run):
    obj = torch.load(cmr_run / "checkpoint_best.pth", weights_only=True)
    card = obj["model_card"]
    assert card["task"] == "cmr" and card["family"] == "fine"
    assert "[coats_sign]" in card["vocab"]["text"] and len(card["vocab"]["sha256"]) == 64
    assert card["image"]["size"] == 32 and card["text"]["prefix"] == "the image description is "
    enc = load_model(cmr_run / "checkpoint_best.pth", device="cpu")
    assert not enc.model.training and enc.precision == "fp32" and enc.task == "cmr"
    assert all(not p.requires_grad for p in enc.model.parameters())


def test_api_embeddings_reproduce_the_cmr_evaluation_exactly(cmr_run, synthetic_root):
    from datasets.fashiongen import FashionGenEvalSet, FashionGenSplit

    enc = load_model(cmr_run / "checkpoint_best.pth", device="cpu")
    split = FashionGenSplit(synthetic_root / "fashiongen", "validation")
    es = FashionGenEvalSet(split, enc.tokenizer, image_res=enc.image_size, max_length=32)
    image_emb = enc.encode_images([split.read_image(int(r)) for r in es.rows])  # PIL images
    text_emb = enc.encode_texts([split.description(int(r)) for r in split.product_starts[es.products]])
    assert torch.allclose(image_emb.norm(dim=1), torch.ones(len(es.rows)), atol=1e-5)
    result = evaluate_cmr(es.product_rows, es.row_subcategory, text_emb=text_emb, image_emb=image_emb,
                          options=CMROptions(protocol="full"))
    reported = json.loads((cmr_run / "results_test.json").read_text())["metrics"]
    assert result.metrics == {k: reported[k] for k in result.metrics}


def test_index_and_query_round_trip_retrieves_at_the_evaluation_rate(cmr_run, synthetic_root, tmp_path, capsys):
    from datasets.fashiongen import FashionGenSplit
    from inference.index import read_index
    from inference.index import search as search_index

    ckpt = str(cmr_run / "checkpoint_best.pth")
    index_file = tmp_path / "fg.index"
    assert search.main(["index", "--checkpoint", ckpt, "--out", str(index_file), "--device", "cpu",
                        "--fashiongen", str(synthetic_root / "fashiongen")]) == 0
    index = read_index(index_file)
    split = FashionGenSplit(synthetic_root / "fashiongen", "validation")
    enc = load_model(ckpt, device="cpu")
    queries = enc.encode_texts([split.description(int(r)) for r in split.product_starts[:-1]])
    idx, _ = search_index(index, queries, 10)
    own = [str(p) for p in split.product_ids.tolist()]
    hits = [any(index.ids[j].rsplit("_", 1)[0] == own[q] for j in row) for q, row in enumerate(idx.tolist())]
    reported = json.loads((cmr_run / "results_test.json").read_text())["metrics"]
    assert 100.0 * sum(hits) / len(hits) == pytest.approx(reported["img_r10"], abs=1e-9)

    # the command line: a table of the top 10 and the JSON file
    out_json = tmp_path / "q.json"
    text = split.description(0)
    assert search.main(["query", "--checkpoint", ckpt, "--index", str(index_file), "--device", "cpu", "--text",
                        text, "--category", "JACKETS & COATS", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert len(result["top_k"]) == 10 and result["top_k"][0]["id"] in printed
    scores = [r["score"] for r in result["top_k"]]
    assert scores == sorted(scores, reverse=True)

    # the approximate index beside it (faiss IVF) finds the exact best item of this query
    assert search.main(["index", "--checkpoint", ckpt, "--out", str(index_file), "--device", "cpu",
                        "--fashiongen", str(synthetic_root / "fashiongen"), "--faiss", "ivf"]) == 0
    assert search.main(["query", "--checkpoint", ckpt, "--index", str(index_file), "--device", "cpu", "--text",
                        text, "--approximate", "--json", str(tmp_path / "approx.json")]) == 0
    approx = json.loads((tmp_path / "approx.json").read_text())["top_k"]
    assert approx[0]["id"] == result["top_k"][0]["id"]


def test_bad_input_is_one_line_naming_the_file_or_value(cmr_run, tmp_path):
    ckpt = str(cmr_run / "checkpoint_best.pth")
    folder = tmp_path / "gallery"
    folder.mkdir()
    base = ["--checkpoint", ckpt, "--device", "cpu"]
    with pytest.raises(DataError, match="empty gallery"):
        search.main(["index", *base, "--out", str(tmp_path / "x.index"), "--images", str(folder)])
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(folder / "red.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        search.main(["index", *base, "--out", str(tmp_path / "x.index"), "--images", str(folder)])
    (folder / "broken.jpg").unlink()
    index_file = tmp_path / "img.index"
    assert search.main(["index", *base, "--out", str(index_file), "--images", str(folder)]) == 0
    with pytest.raises(FileNotFoundError, match="missing.png"):
        search.main(["query", *base, "--index", str(index_file), "--image", str(tmp_path / "missing.png")])
    with pytest.raises(DataError, match="unknown category 'hats and gloves'"):
        search.main(["query", *base, "--index", str(index_file), "--text", "a red coat", "--category",
                     "hats and gloves"])
    # an index of another model: the ids are the same, the weights differ
    other = torch.load(ckpt, weights_only=True)
    other["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["model"].items()}
    other.pop("sha256")
    other["format"] = "fashionfine-1"
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(DataError, match="another model|built by model"):
        search.main(["query", "--checkpoint", str(tmp_path / "other.pth"), "--device", "cpu", "--index",
                     str(index_file), "--text", "a red coat"])
    # the entry point: one line on stderr, exit status 2
    proc = subprocess.run([sys.executable, "search.py", "query", *base, "--index", str(tmp_path / "none.index"),
                           "--text", "coat"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "none.index" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def tgir_run(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tgir_run") / "run"
    assert tgir.main(["--config", "configs/tgir_tiny.yaml", "--output_dir", str(out), "--set",
                      f"data.root={synthetic_root / 'fashioniq'}", f"data.tokenizer={synthetic_root / 'tokenizer'}",
                      "data.max_words=24", *FAST]) == 0
    return out


def test_api_tgir_queries_reproduce_the_evaluation_exactly(tgir_run, synthetic_root):
    from datasets.fashioniq import FashionIQLayout, read_caption_file
    from evaluation.tgir import QuerySet, TGIROptions, build_gallery, evaluate_tgir

    enc = load_model(tgir_run / "checkpoint_best.pth", device="cpu")
    cfg = enc.cfg
    layout = FashionIQLayout.open(synthetic_root / "fashioniq", cfg.data.image_dir, cfg.data.image_ext)
    sets, names = {}, set()
    for category in cfg.eval.categories:
        triplets = read_caption_file(layout, category, "val")
        refs, targets = [t.reference for t in triplets], [t.target for t in triplets]
        gallery = build_gallery(cfg.eval.gallery, refs, targets, None, source=category)
        names |= set(gallery)
        query = enc.encode_queries([layout.image_path(r) for r in refs], [list(t.captions) for t in triplets])
        sets[category] = (query, refs, targets, gallery)
    names = sorted(names)
    by_name = dict(zip(names, enc.encode_images([layout.image_path(n) for n in names])))
    query_sets = {c: QuerySet(q, r, t, g, by_name) for c, (q, r, t, g) in sets.items()}
    result = evaluate_tgir(query_sets, TGIROptions(gallery=cfg.eval.gallery,
                                                   exclude_reference=cfg.eval.exclude_reference))
    reported = json.loads((tgir_run / "results_val.json").read_text())["metrics"]
    assert result.metrics == {k: reported[k] for k in result.metrics}


def test_api_asen_embeddings_reproduce_the_map_exactly(tmp_path_factory):
    import numpy as np

    from datasets.asen import load_eval_split, schema_from_config
    from evaluation.map import attribute_map

    data = synthetic_asen(tmp_path_factory)
    out = tmp_path_factory.mktemp("asen_run")
    assert asen_main.main(tiny_args(data, 1, out, "DATA.NUM_TRIPLETS=96", "SOLVER.EPOCHS=1")) == 0
    run = out / "synthetic_s1"
    enc = load_model(run / "model_best.pth.tar", device="cpu")
    assert enc.attributes == list(schema_from_config(enc.cfg.DATA).names)
    split = load_eval_split(enc.cfg.DATA, "test", schema_from_config(enc.cfg.DATA))

    def embed(lines):
        emb = torch.empty(len(lines.fid), 0)
        for a in sorted(set(lines.attr.tolist())):
            rows = np.flatnonzero(lines.attr == a)
            part = enc.encode_images([split.root / split.images[f] for f in lines.fid[rows]], int(a))
            emb = emb if emb.shape[1] else torch.empty(len(lines.fid), part.shape[1])
            emb[torch.as_tensor(rows)] = part
        return emb

    t = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    q, c = split.queries, split.candidates
    result = attribute_map(embed(q), t(q.attr), t(q.value), embed(c), t(c.attr), t(c.value), len(enc.attributes))
    reported = json.loads((run / "map_test.json").read_text())["metrics"]
    assert 100 * result.total == pytest.approx(reported["map"], abs=1e-9)
    with pytest.raises(DataError, match="unknown attribute 'sleeve_length_x'"):
        enc.encode_images([split.root / split.images[0]], "sleeve_length_x")

    # search.py: an index of one attribute answers that attribute only
    base = ["--checkpoint", str(run / "model_best.pth.tar"), "--device", "cpu"]
    index_file = out / "colour.index"
    assert search.main(["index", *base, "--asen-split", "test", "--attribute", "colour", "--out",
                        str(index_file)]) == 0
    image = str(split.root / split.images[0])
    assert search.main(["query", *base, "--index", str(index_file), "--image", image, "--attribute", "colour"]) == 0
    with pytest.raises(DataError, match="holds attribute colour embeddings, asked for attribute pattern"):
        search.main(["query", *base, "--index", str(index_file), "--image", image, "--attribute", "pattern"])


def write_vocab(path: Path, size: int) -> Path:
    """A vocabulary of `size` tokens with the published special ids ([PAD] 0, signs 1..9, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103)."""
    from datasets.fashiongen_meta import SIGN_TOKENS

    tokens = ["[PAD]", *SIGN_TOKENS] + [f"[unused{i}]" for i in range(10, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"word{i}" for i in range(size - len(tokens))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def test_a_released_published_checkpoint_loads_through_the_same_call(tmp_path):
    from inference.encoders import TokenInputs
    from tests.parity_helpers import load_fixture
    from tests.test_parity_fine import EMB_ABS, size_overrides

    fixture = load_fixture("fine_retrieval_tiny.pt")
    released = tmp_path / "checkpoint_cmr_best_ft.pth"
    torch.save({"model": fixture["state_dict"]}, released)  # the published layout, published key names
    vocab = write_vocab(tmp_path / "tokenizer" / "vocab.txt", fixture["config"]["bert"]["vocab_size"])
    with pytest.raises(ConfigError, match="no model card"):
        load_model(released, device="cpu")
    enc = load_model(released, device="cpu", task="cmr", config=ROOT / "configs/retrieval.yaml",
                     tokenizer=vocab.parent, overrides=size_overrides(fixture["config"]))
    inputs, outputs = fixture["inputs"], fixture["outputs"]
    image_emb = enc.encode_images(list(inputs["eval_images"]))  # float model inputs pass unchanged
    text_emb = enc.encode_token_inputs(TokenInputs(inputs["eval_text_input_ids"], inputs["eval_text_attention_mask"]))
    assert (image_emb - outputs["img_emb"]).abs().max() <= EMB_ABS
    assert (text_emb - outputs["txt_emb"]).abs().max() <= EMB_ABS


def test_api_blip_embeddings_reproduce_the_evaluation_exactly(synthetic_root, tmp_path):
    import train_blip
    from datasets.fashiongen_blip import BlipCaptions, BlipEvalSet, split_sign
    from tests.blip_helpers import TINY, blip_view_of, data_overrides

    data, tokenizer = blip_view_of(synthetic_root, tmp_path / "blip")
    out = tmp_path / "run"
    assert train_blip.main(["--config", str(TINY["2"]), "--output_dir", str(out), "--set", "checkpoint=null",
                            *data_overrides(data, tokenizer), "train.epochs=1", "runtime.num_workers=0",
                            "runtime.cpu_threads=1", "eval.protocol=full"]) == 0
    enc = load_model(out / "checkpoint_best.pth" if (out / "checkpoint_best.pth").is_file()
                     else out / "checkpoint_last.pth", device="cpu")
    assert enc.task == "fine_blip"
    cfg = enc.cfg
    captions = BlipCaptions(enc.tokenizer, max_words=cfg.data.max_words, max_length=cfg.data.max_length)
    es = BlipEvalSet.from_test_annotation(data / cfg.data.annotation_dir / cfg.data.test_annotation,
                                          data / cfg.data.image_dir, captions, image_res=enc.image_size)
    image_emb = enc.encode_images([data / cfg.data.image_dir / n for n in es.image_names])
    text_emb = enc.encode_texts(es.texts.captions)
    # fixed sign mode: evaluation strips a caption's leading sign, so a category does not change the vector
    symbol = BlipEvalSet.from_test_annotation(data / cfg.data.annotation_dir / "fashiongen_test_symbol.json",
                                              data / cfg.data.image_dir, captions, image_res=enc.image_size)
    signs = [split_sign(c)[0][1:-1] for c in symbol.texts.captions[:8]]
    assert torch.equal(enc.encode_texts(es.texts.captions[:8], signs), text_emb[:8])
    result = evaluate_cmr(es.product_rows, text_emb=text_emb, image_emb=image_emb,
                          options=CMROptions(protocol="full", blip=True, k_test=cfg.eval.k_test))
    reported = json.loads((out / "results_test.json").read_text())["metrics"]
    assert result.metrics == {k: reported[k] for k in result.metrics}


def test_exported_encoders_match_the_api_on_the_synthetic_data(cmr_run, synthetic_root, tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort

    from datasets.fashiongen import FashionGenSplit

    ckpt = str(cmr_run / "checkpoint_best.pth")
    assert search.main(["export", "--checkpoint", ckpt, "--device", "cpu", "--out", str(tmp_path / "onnx")]) == 0
    assert "largest absolute difference" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert sidecar["preprocessing"]["image"]["size"] == 32 and "text" not in sidecar["preprocessing"]["vocab"]
    enc = load_model(ckpt, device="cpu")
    split = FashionGenSplit(synthetic_root / "fashiongen", "validation")
    images = [split.read_image(r) for r in range(12)]
    texts = [split.description(r) for r in range(5)]
    pixels = torch.stack([enc.image_inputs(images).model_input(i) for i in range(len(images))])
    ids, mask = enc.text_tokens(texts)
    run = {name: ort.InferenceSession(str(tmp_path / "onnx" / sidecar["encoders"][name]["file"]),
                                      providers=["CPUExecutionProvider"]) for name in ("image", "text")}
    onnx_images = run["image"].run(None, {"image": pixels.numpy()})[0]
    onnx_texts = run["text"].run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert np.abs(onnx_images - enc.encode_images(images).numpy()).max() < 1e-4
    assert np.abs(onnx_texts - enc.encode_texts(texts).numpy()).max() < 1e-4


def test_an_interrupted_index_build_continues_and_gives_the_same_file(cmr_run, synthetic_root, tmp_path, capsys,
                                                                      monkeypatch):
    import inference.galleries

    args = ["index", "--checkpoint", str(cmr_run / "checkpoint_best.pth"), "--device", "cpu", "--fashiongen",
            str(synthetic_root / "fashiongen"), "--texts", "--chunk-items", "64"]
    assert search.main([*args, "--out", str(tmp_path / "whole.index")]) == 0
    encode, calls = inference.galleries.encode_gallery, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while embedding the third chunk
        return encode(*a, **k)

    monkeypatch.setattr(inference.galleries, "encode_gallery", dying)
    with pytest.raises(KeyboardInterrupt):
        search.main([*args, "--out", str(tmp_path / "resumed.index")])
    monkeypatch.setattr(inference.galleries, "encode_gallery", encode)
    capsys.readouterr()
    assert search.main([*args, "--out", str(tmp_path / "resumed.index")]) == 0
    assert "128 of 330 items already embedded" in capsys.readouterr().out
    assert (tmp_path / "resumed.index").read_bytes() == (tmp_path / "whole.index").read_bytes()
    assert not list(tmp_path.glob("*.parts"))

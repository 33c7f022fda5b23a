"""The training input pipeline keeps its output bit for bit: digests of the augmented tensors (train transform at
256 px / M7 and 384 px / M5 over seeds that apply every RandAugment op, each op alone, normalisation, test
transform) fixed from the code before its speed-up, the CLIP normalisation against its formula for every byte
value, and the direct HDF5 row reads against h5py on contiguous, chunked and compressed files."""

from __future__ import annotations

import hashlib
import os

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.fashiongen import LazyH5, RowLayout, _scalar
from datasets.transforms import (
    _SIGNED_OPS,
    CLIP_MEAN,
    CLIP_STD,
    RANDAUG_OPS,
    TestTransform,
    TrainTransform,
    apply_op,
    op_magnitude,
    to_normalized_tensor,
)

PIPELINES = {"fashiongen": (256, 7), "blip": (384, 5)}  # (image_res, RandAugment magnitude)
SEEDS = range(16)  # together they apply each of the ten ops at both magnitudes


def photo(size: int, seed: int, white: bool = False) -> Image.Image:
    """A deterministic product-like photo: gradient or near-white background, noise, a coloured block."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    if white:
        img = np.full((size, size, 3), 250, np.int64)
    else:
        img = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), (x + y) * 255 // (2 * size - 2)], -1)
    img = img + rng.integers(-12, 13, (size, size, 3))
    a, b, c, d = size // 5, 4 * size // 5, size // 3, 2 * size // 3
    img[a:b, c:d] = rng.integers(0, 256, 3) + rng.integers(-30, 31, (b - a, d - c, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def digest(value: torch.Tensor | Image.Image | np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of dtype, shape and C-order bytes."""
    a = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    payload = str(a.dtype).encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes()
    return hashlib.sha256(payload).hexdigest()[:16]


def op_cases() -> list[tuple[str, float]]:
    """Every op at magnitudes 7 and 5, signed ops with both signs."""
    cases = []
    for op in RANDAUG_OPS:
        for magnitude in (7, 5):
            p = op_magnitude(op, magnitude)
            cases += [(op, p), (op, -p)] if op in _SIGNED_OPS else [(op, p)]
    return cases


GOLDEN = {
    "fashiongen": [
        "13f2b33e93724fff", "135894fb1dbfa7bc", "38148bd0a0a954e0", "9b5587b024d2114c",
        "d70a4bca730800b8", "45ad0c234cad5793", "452e9211c1c5ccc5", "1b9529a853c16924",
        "5ea11539488469af", "bfe253a924efbe15", "11048b6baa618bde", "c9a56e369e59fec1",
        "2d8fc93b9c106d4a", "7e25bcd844879f11", "fc4a78a774fbcd67", "42735ae7f2b4f053",
    ],
    "blip": [
        "e8bda32cf9c27a11", "99603c1130ad79b5", "373b1aba2c54fe5f", "c7b96293a51c30fe",
        "ecf3faac52ae03ad", "93b9c20aa62849fc", "2514938bc56bcf12", "e012829f5b14424d",
        "224b3bf602fe0948", "b08b35c535c63069", "6ca95ac41d383f25", "a7c02e4e70f2f7be",
        "52ab69b83fa89979", "c5ce59d0630d7cbc", "53270ced6ed8aa36", "fe96800ff670fb77",
    ],
}
GOLDEN_OPS = {  # "op:signed parameter": digest on the gradient photo / on the white-background photo
    "Identity:0": "a229156498878bfd/0c321e72c9a88bff",
    "AutoContrast:0": "a229156498878bfd/28f882713ed7fb24",
    "Equalize:0": "9cec30f7d48f16b9/6ce74a1f9400b8e7",
    "Brightness:1.36": "e118e80d3842daea/a48ef23cb6f3a70c",
    "Brightness:1": "a229156498878bfd/0c321e72c9a88bff",
    "Sharpness:1.36": "20a70cd4cc270a91/d312aed22d9f8bb0",
    "Sharpness:1": "a229156498878bfd/0c321e72c9a88bff",
    "ShearX:0.21": "893aa74bafe27eb9/dc59477206466f70",
    "ShearX:-0.21": "91be1b2cc846b602/78f4b436a7afb967",
    "ShearX:0.15": "9834c5cf72ad3713/a57b61a58043a5ca",
    "ShearX:-0.15": "5a048b2ae59134b4/82d2132266b0bd89",
    "ShearY:0.21": "2ed3352ca509b8a9/707b712b00a0f6a2",
    "ShearY:-0.21": "7fe1da880fd36738/39d2f4c0b115e3e8",
    "ShearY:0.15": "f73fadc7e6107a9e/eb908eadf6524511",
    "ShearY:-0.15": "18b7fc46f64141e3/a668e3bc59e44d3e",
    "TranslateX:7": "049254fc4724a008/a61439aa361745a5",
    "TranslateX:-7": "ed6f28dad5ff5462/844b3c7ef0080c33",
    "TranslateX:5": "3c4e548b4f9f72f1/8d8f735d9276c934",
    "TranslateX:-5": "26d9123aa670d59f/3c9316ad6886b53c",
    "TranslateY:7": "71f9728d73b9dda4/545ad6ee77423b34",
    "TranslateY:-7": "319f7c03332fd368/eeca5713fb5d3e49",
    "TranslateY:5": "9dd024c7a11c3d65/1c6638d0c8976e3d",
    "TranslateY:-5": "e45e671d0dc29a60/a5c86ec1a44ac51a",
    "Rotate:21": "2c2c27484ae81b50/3cefe0a257d55144",
    "Rotate:-21": "bfd66f7771958337/ebf82638cbd3e48b",
    "Rotate:15": "2ad86bdbd6cb00d4/7344a86569af0410",
    "Rotate:-15": "b9b22517fc8f0b1a/3e202f9508a38154",
}
GOLDEN_NORM = {  # to_normalized_tensor of the gradient photo converted to each mode
    "RGB": "b4027d17ab3b7338",
    "L": "c17a90ec79c91e50",
    "RGBA": "b4027d17ab3b7338",
    "P": "11aca6d54d89e226",
}
GOLDEN_TEST = {  # TestTransform(image_res) of the gradient photo
    64: "d9ca98b6ceee1bca",
    256: "b4027d17ab3b7338",
    384: "542547132de4d215",
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_train_transform_output_unchanged(name):
    res, magnitude = PIPELINES[name]
    t = TrainTransform(res, magnitude)
    got = [digest(t(photo(256, s % 3, white=s % 2 == 1), np.random.default_rng(s))) for s in SEEDS]
    assert got == GOLDEN[name]


def test_each_randaugment_op_output_unchanged():
    img, white = photo(256, 7), photo(256, 8, white=True)
    got = {f"{op}:{p:g}": digest(apply_op(img, op, p)) + "/" + digest(apply_op(white, op, p)) for op, p in op_cases()}
    assert got == GOLDEN_OPS


def test_normalisation_and_test_transform_unchanged():
    img = photo(256, 7)
    assert {m: digest(to_normalized_tensor(img.convert(m))) for m in GOLDEN_NORM} == GOLDEN_NORM
    assert {r: digest(TestTransform(r)(img)) for r in GOLDEN_TEST} == GOLDEN_TEST


def test_normalisation_equals_the_formula_for_every_byte_value():
    rng = np.random.default_rng(0)
    pixels = np.stack([rng.permutation(256 * 3) % 256 for _ in range(3)], -1).reshape(48, 16, 3).astype(np.uint8)
    out = to_normalized_tensor(Image.fromarray(pixels))
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    reference = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0).sub_(mean).div_(std)
    assert out.dtype == torch.float32 and out.shape == (3, 48, 16) and out.is_contiguous()
    assert torch.equal(out, reference)


# ----------------------------------------------------------------------------- HDF5 rows


def write_h5(path, layout: str) -> dict[str, np.ndarray]:
    """A small FashionGen-like file: images, fixed-length strings (N, 1), integers and floats (N,)."""
    rng = np.random.default_rng(1)
    n = 9
    columns = {
        "input_image": rng.integers(0, 256, (n, 12, 10, 3), dtype=np.uint8),
        "input_description": np.array([[f"row {i} caf\xe9 ".encode("latin-1") * (i % 4)] for i in range(n)],
                                      dtype="S64"),
        "input_name": np.array([[b"a\x00b"], [b""], [b"x" * 5]] * 3, dtype="S5"),
        "input_productID": rng.integers(0, 1 << 40, n).astype(">i8"),
        "index": np.arange(n, dtype=np.int64),
        "input_msrpUSD": rng.random(n).astype(np.float32),
    }
    with h5py.File(path, "w") as f:
        for key, value in columns.items():
            if layout == "contiguous":
                f.create_dataset(key, data=value)
            else:
                f.create_dataset(key, data=value, chunks=(2, *value.shape[1:]),
                                 compression="gzip" if layout == "gzip" else None)
    return columns


@pytest.mark.parametrize("layout", ["contiguous", "chunked", "gzip"])
def test_row_reads_equal_h5py(tmp_path, layout):
    path = tmp_path / f"{layout}.h5"
    columns = write_h5(path, layout)
    lazy = LazyH5(path)
    with h5py.File(path, "r") as f:
        for key, values in columns.items():
            direct = RowLayout.of(f[key]) is not None
            assert direct == (layout == "contiguous" and key != "input_productID"), key  # >i8: through h5py
            for row in range(len(values)):
                got, want = lazy.read_row(key, row), f[key][row]
                assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
                assert _scalar(got) == _scalar(want) if key != "input_image" else np.array_equal(got, want)
    assert lazy.read_row("input_image", 3).flags.writeable
    lazy.close()
    assert not lazy.is_open


def _rows(lazy: LazyH5, rows: list[int]) -> list[tuple[int, bytes, str]]:
    return [(os.getpid(), lazy.read_row("input_image", r).tobytes(), _scalar(lazy.read_row("input_description", r)))
            for r in rows]


class _Rows(torch.utils.data.Dataset):
    def __init__(self, lazy: LazyH5) -> None:
        self.lazy = lazy

    def __len__(self) -> int:
        return 9

    def __getitem__(self, i: int) -> tuple[int, bytes, str]:
        return _rows(self.lazy, [i])[0]


def test_row_reads_in_forked_workers(tmp_path):
    path = tmp_path / "contiguous.h5"
    write_h5(path, "contiguous")
    lazy = LazyH5(path)
    here = _rows(lazy, list(range(9)))  # opened in the parent; closed before the fork
    loader = DataLoader(_Rows(lazy), batch_size=None, num_workers=2, multiprocessing_context="fork")
    there = list(loader)
    assert {pid for pid, _, _ in there} != {os.getpid()}
    assert [tuple(item[1:]) for item in there] == [item[1:] for item in here]

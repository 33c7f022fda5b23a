"""What `search.py index` can index, as the evaluation reads it: a folder of images, a FashionGen split (images
or product texts), a FashionIQ split, an ASEN++ split (the candidates of one attribute). Each gallery is a
dataset of model inputs with one id and one displayable path per item."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.images import IMAGE_SUFFIXES, image_files, load_rgb
from engine.errors import DataError
from inference.encoders import AsenEncoder, AsenImageInputs, Encoder, FashionGenEncoder

H5_MARK = "#row="  # a FashionGen item's path: <file.h5>#row=<row>


@dataclass
class Gallery:
    """Items to index: `dataset[i]` is the model input of item i, `ids[i]` its id, `paths[i]` where it is."""

    dataset: Dataset
    ids: list[str]
    paths: list[str]
    kind: str  # "image" or "text"
    source: str
    attribute: str | None = None
    texts: list[str] = field(default_factory=list)  # text galleries: what is shown for each item

    def __post_init__(self) -> None:
        if not self.ids:
            raise DataError(f"{self.source}: empty gallery, nothing to index")


def folder_gallery(encoder: Encoder, folder: str | Path, attribute: str | None = None) -> Gallery:
    """Every image under `folder` (sorted; ids are the paths relative to it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    ids = image_files(folder)
    if not ids:
        raise DataError(f"{folder}: empty gallery, no images ({', '.join(IMAGE_SUFFIXES)})")
    paths = [str(folder / i) for i in ids]
    if isinstance(encoder, AsenEncoder):
        attr = _attribute(encoder, attribute)
        return Gallery(AsenImageInputs(paths, encoder.attribute_index(attr), encoder.card), ids, paths, "image",
                       str(folder), attribute=attr)
    return Gallery(encoder.image_inputs(paths), ids, paths, "image", str(folder))


def _attribute(encoder: AsenEncoder, attribute: str | None) -> str:
    if attribute is None:
        raise DataError(f"an ASEN++ index is built for one attribute: pass --attribute "
                        f"({', '.join(encoder.attributes)})")
    return encoder.attributes[encoder.attribute_index(attribute)]


def fashiongen_gallery(encoder: Encoder, root: str | Path, split: str = "validation", kind: str = "image"
                       ) -> Gallery:
    """A FashionGen split as the CMR evaluation reads it: every image (ids `<product>_<pose>`), or one text per
    product (ids = product ids)."""
    from datasets.fashiongen import FashionGenEvalSet, FashionGenSplit

    if not isinstance(encoder, FashionGenEncoder):
        raise DataError(f"a FashionGen split is indexed with a Fashion-FINE CMR or pretraining model, not {encoder.task}")
    data = FashionGenSplit(root, split)
    eval_set = FashionGenEvalSet(data, encoder.tokenizer, image_res=encoder.image_size,
                                 max_length=encoder.card["text"]["max_length"])
    products = eval_set.product_ids
    if kind == "text":
        texts = [eval_set.texts.text(i) for i in range(len(eval_set.texts))]
        return Gallery(eval_set.texts, [str(p) for p in products], [f"{data.h5_path}{H5_MARK}{int(r)}"
                       for r in data.product_starts[eval_set.products]], "text", str(data.h5_path), texts=texts)
    poses = [f"{products[p]}_{k}" for p, rows in enumerate(eval_set.product_rows) for k in range(len(rows))]
    return Gallery(eval_set.images, poses, [f"{data.h5_path}{H5_MARK}{int(r)}" for r in eval_set.rows], "image",
                   str(data.h5_path))


def fashioniq_gallery(encoder: Encoder, root: str | Path, category: str, split: str = "val",
                      image_dir: str = "images", image_ext: str = ".png") -> Gallery:
    """The images of a FashionIQ category split file (`image_splits/split.<category>.<split>.json`)."""
    from datasets.fashioniq import FashionIQLayout, GalleryImageDataset, read_image_split
    from datasets.transforms import TestTransform

    layout = FashionIQLayout.open(root, image_dir, image_ext)
    names = sorted(set(read_image_split(layout, category, split)))
    dataset = GalleryImageDataset(names, layout, TestTransform(encoder.image_size),
                                  source=str(layout.split_path(category, split)))
    return Gallery(dataset, names, [str(layout.image_path(n)) for n in names], "image",
                   str(layout.split_path(category, split)))


def asen_gallery(encoder: AsenEncoder, split: str, attribute: str | None, data_root: str | None = None) -> Gallery:
    """The candidate images of one attribute in an ASEN++ split (the model's DATA config; `data_root`
    overrides DATA.BASE_PATH)."""
    from datasets.asen import dataset_root, load_eval_split, schema_from_config

    attr_name = _attribute(encoder, attribute)
    attr = encoder.attribute_index(attr_name)
    data_cfg = encoder.cfg.DATA
    if data_root is not None:  # a copy: the encoder's config stays as its checkpoint recorded it
        data_cfg = dataclasses.replace(data_cfg, BASE_PATH=str(data_root))
    s = load_eval_split(data_cfg, split, schema_from_config(data_cfg))
    fids = sorted(set(np.asarray(s.candidates.fid)[np.asarray(s.candidates.attr) == attr].tolist()))
    root = dataset_root(data_cfg)
    ids = [s.images[f] for f in fids]
    paths = [str(root / s.images[f]) for f in fids]
    return Gallery(AsenImageInputs(paths, attr, encoder.card), ids, paths, "image", str(s.list_path),
                   attribute=attr_name)


def encode_gallery(encoder: Encoder, gallery: Gallery, items: Dataset) -> torch.Tensor:
    """Embeddings of `items` (a subset of `gallery.dataset`) with the evaluation's extraction."""
    if isinstance(encoder, AsenEncoder):
        return encoder.encode_asen_inputs(items)
    if gallery.kind == "text":
        return encoder.encode_token_inputs(items)  # type: ignore[attr-defined]
    return encoder.encode_image_inputs(items)


def item_image(path: str) -> Image.Image:
    """The picture of an indexed item (a file, or a FashionGen HDF5 row)."""
    if H5_MARK in path:
        import h5py

        file, row = path.rsplit(H5_MARK, 1)
        from datasets.fashiongen_h5 import IMAGE_KEY

        with h5py.File(file, "r") as h5:
            return Image.fromarray(np.asarray(h5[IMAGE_KEY][int(row)], dtype=np.uint8))
    return load_rgb(path)

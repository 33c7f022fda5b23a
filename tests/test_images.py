"""The shared image reader: RGB output, and missing or broken files named with the listing that names them."""

import pytest
from PIL import Image

from datasets.images import load_rgb
from engine.errors import DataError


def test_grey_png_comes_back_rgb(tmp_path):
    Image.new("L", (5, 3), color=128).save(tmp_path / "g.png")
    img = load_rgb(tmp_path / "g.png")
    assert img.mode == "RGB" and img.size == (5, 3) and img.getpixel((0, 0)) == (128, 128, 128)


def test_missing_file_names_file_source_and_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image .*absent\.png \(listed in list\.txt:3\) not found; run x"):
        load_rgb(tmp_path / "absent.png", "list.txt:3", "run x")


def test_unreadable_file_is_a_data_error_naming_it(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"^ann\.json, record 4: cannot read image .*broken\.png"):
        load_rgb(tmp_path / "broken.png", "ann.json, record 4")

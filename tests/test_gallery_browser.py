"""The `--gallery N` page of a real (tiny, randomly initialised) CMR evaluation, opened in headless Chromium: it
renders (a screenshot), every inlined image decodes, and it shows the queries, results and ground-truth marks
of the top-K files. Plus the page writer alone: self-contained and escaped.

Chromium: /usr/bin/chromium (scripts/test.sh installs it where it can). Without it the browser test skips,
unless FASHIONFINE_REQUIRE_BROWSER is set, when it fails."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from evaluation.topk import read_topk
from inference.gallery import Item, Query, Section, render_gallery_page, write_gallery_page
from tests.view_helpers import evaluate_cmr_run, fresh_cmr_checkpoint

pytestmark = pytest.mark.usefixtures("restore_torch_globals")  # tests/conftest.py

N, K = 3, 4
WINDOW = (1000, 1400)


def chromium() -> str:
    """The browser, or skip (fail when FASHIONFINE_REQUIRE_BROWSER is set)."""
    path = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
    if path:
        return path
    if os.environ.get("FASHIONFINE_REQUIRE_BROWSER"):
        pytest.fail("FASHIONFINE_REQUIRE_BROWSER is set but Chromium is missing (/usr/bin/chromium; "
                    "scripts/test.sh installs it with apt-get when run as root)")
    pytest.skip("Chromium is not installed (/usr/bin/chromium); scripts/test.sh installs it with apt-get as root")


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def evaluated(synthetic_root, tmp_path_factory) -> Path:
    """`retrieval.py --evaluate --topk K --gallery N` of a fresh tiny model: its output folder."""
    folder = tmp_path_factory.mktemp("gallery_eval")
    checkpoint = fresh_cmr_checkpoint(synthetic_root, folder)
    assert evaluate_cmr_run(synthetic_root, folder / "out", checkpoint, "--topk", str(K), "--gallery", str(N)) == 0
    return folder / "out"


def test_gallery_page_renders_every_image_and_the_counts_in_chromium(evaluated, tmp_path):
    browser = chromium()
    page = evaluated / "gallery_test.html"
    assert page.is_file()
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)  # nothing fetched from the network

    shot = tmp_path / "page.png"
    proc = headless(browser, tmp_path / "profile1", f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                    "--hide-scrollbars", page.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50  # thumbnails and text, not a blank page

    proc = headless(browser, tmp_path / "profile2", "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:2000]
    shown = {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1))}
    t2i, i2t = (read_topk(evaluated / f"topk_test_{d}.jsonl")[:N] for d in ("t2i", "i2t"))
    positives = sum(sum(r["positive"]) for r in t2i + i2t)
    # text queries show K images each; image queries show their image and K text cards
    assert shown == {"images": N * K + N, "images-loaded": N * K + N, "queries": 2 * N, "results": 2 * N * K,
                     "positives": positives, "ready": 1}
    # ranks and scores of the files are on the page
    for rec in t2i:
        assert f"product {rec['query']}" in text and f"image {rec['ids'][0]}" in text
        assert f"score {rec['scores'][0]:.4f}" in text


def test_page_writer_is_self_contained_and_escapes_text(tmp_path):
    red = Image.new("RGB", (400, 200), (200, 30, 30))
    sections = [Section("a <b>section</b>", [
        Query(Item(text='<script>alert("x")</script> & more', label="q<1>"),
              [Item(image=red, label="hit", score=0.5, positive=True), Item(text="<i>card</i>", label="t", score=0.1)],
              rank=0, note="note & <note>"),
        Query(Item(image=red), [Item(image=red, label="miss", score=0.2)], rank=7)])]
    page = render_gallery_page("title <x>", sections)
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert "<b>section" not in page and "<i>card" not in page and "note &amp; &lt;note&gt;" in page
    assert page.count("<script>") == 1  # the page's own counter
    assert page.count('class="card positive"') == 1 and "&#10003;" in page
    assert "positive at <span class=\"rank\">#1</span>" in page and "#8</span> (not among the 1 shown)" in page
    uris = re.findall(r'src="([^"]+)"', page)
    assert len(uris) == 3 and all(u.startswith("data:image/jpeg;base64,") for u in uris)
    path = write_gallery_page(tmp_path / "g.html", "title <x>", sections, thumbnail_px=64)
    first = re.search(r'src="data:image/jpeg;base64,([^"]+)"', path.read_text(encoding="utf-8")).group(1)
    with Image.open(io.BytesIO(base64.b64decode(first))) as thumb:
        assert thumb.size == (64, 32)  # longest side 64 px, aspect kept

"""The built site as a browser shows it: headless Chromium (Debian's `chromium`, which `make`
installs) renders the home page and the API page; the theme's styles are applied (its header
colour fills the top of the screenshot) and the API page lists the public API, so a broken theme
or an empty API page is seen, not assumed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from docs_pages import ROOT
from PIL import Image

INDIGO = (63, 81, 181)  # material's `primary: indigo` header


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict",
                          "--site-dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def chromium(*args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium")
    assert browser, "chromium is missing: `make setup` installs it (apt-get install chromium)"
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def screenshot(page: Path, png: Path) -> Image.Image:
    run = chromium(f"--screenshot={png}", "--window-size=1280,900", page.as_uri())
    assert png.is_file(), run.stderr[-2000:]
    return Image.open(png).convert("RGB")


def header_share(image: Image.Image) -> float:
    """The share of the top 40 pixel rows in the theme's header colour."""
    band = np.asarray(image)[:40].astype(int)
    return float((np.abs(band - INDIGO).max(axis=2) <= 12).mean())


@pytest.mark.parametrize("name", ["index.html", "api/index.html"])
def test_pages_render_with_the_theme(site, tmp_path, name):
    image = screenshot(site / name, tmp_path / "page.png")
    assert header_share(image) > 0.5, "the theme's header is not drawn: its styles did not load"
    body = np.asarray(image)[60:].reshape(-1, 3)
    colours = len(np.unique(body, axis=0))
    assert colours > 50, "the page below the header is blank"


def test_the_api_page_shows_the_public_api(site):
    dom = chromium("--dump-dom", (site / "api" / "index.html").as_uri()).stdout
    for name in ("jestkit.select", "jestkit.Selector", "jestkit.dropin.SelectiveLoader",
                 "jestkit.openclip.JESTTask", "jestkit.dropin.cache.ReferenceCache"):
        assert f'id="{name}"' in dom, f"the rendered API page has no entry for {name}"
    assert dom.count('class="doc doc-contents') >= 20

"""The built book as a reader's browser sees it: a small book built with the real configuration
(_config.yml, book/_ext, book/_static, MathJax served by the build), rendered in headless Chromium;
maths typeset without the network, no link to a missing file, no placeholder address, no test marker.

``python -m ipcv.book check`` runs the same checks on the full book after ``make book``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jupyter_book")
from ipcv import book  # noqa: E402

PAGE = """# Maths check

Inline $s_i = \\lVert h_{i,l_p} - h_{i,l_p-1} \\rVert_2$ and a display formula:

$$\\hat{h}_{j} = h_{j,l_p} + \\frac{1}{k} \\sum_{i \\in \\mathcal{N}_k(j)} (h_{i,L} - h_{i,l_p})$$

A link to {doc}`other`.

| a wide | table |
|---|---|
| {long} | 2 |

<script>
window.addEventListener("load", () => {
  const t = document.querySelector("article table");
  document.body.dataset.tableScroll = getComputedStyle(t).overflowX + ":" + (t.scrollWidth > t.clientWidth);
});
</script>
"""


def test_broken_links_finds_missing_targets(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "ok.html").write_text("x")
    (tmp_path / "sub" / "page.html").write_text(
        '<a href="../ok.html#top">ok</a> <img src="missing.png"> <a href="https://example.org/x">ext</a>'
        ' <a href="#here">anchor</a> <a href="../_sources/page.ipynb">download</a>'
    )
    assert book.broken_links(tmp_path) == ["sub/page.html -> missing.png", "sub/page.html -> ../_sources/page.ipynb"]


@pytest.fixture(scope="module")
def small_book(tmp_path_factory):
    if shutil.which("jupyter-book") is None and not Path(sys.executable).with_name("jupyter-book").exists():
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    root = tmp_path_factory.mktemp("book")
    shutil.copy(book.ROOT / "_config.yml", root / "_config.yml")
    (root / "book").mkdir()
    for name in ("_ext", "_static"):
        shutil.copytree(book.ROOT / "book" / name, root / "book" / name)
    shutil.copy(book.ROOT / "book" / "references.bib", root / "book" / "references.bib")
    (root / "book" / "check.md").write_text(PAGE.replace("{long}", "w" * 400))
    (root / "book" / "other.md").write_text("# Other\n\nBack to {doc}`check`.\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/check\nchapters:\n  - file: book/other\n")
    book.copy_mathjax(root / "book" / "_generated" / "static" / "mathjax")
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "-W", "-n", "--keep-going"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "_build" / "html"


def test_small_book_has_no_broken_link_or_placeholder(small_book):
    assert book.broken_links(small_book) == []
    assert (small_book / "_static" / "mathjax" / "MathJax.js").exists()
    html = (small_book / "book" / "check.html").read_text()
    assert "mathjax/MathJax.js" in html and "cdn.jsdelivr" not in html, "MathJax must come from the build, not a CDN"
    assert "ipcv-project" not in html
    if not book.repository_url():
        assert "colab.research.google.com" not in html and "repository-button" not in html


# CI installs chromium (.ci/run); there a missing browser is a failure, not a skip
NO_BROWSER = book.chromium() is None and not os.environ.get("CI")


@pytest.mark.skipif(NO_BROWSER, reason="no chromium (apt-get install -y chromium)")
def test_maths_is_typeset_in_headless_chromium(small_book, tmp_path):
    dom = book.render(small_book / "book" / "check.html", tmp_path / "profile", tmp_path / "check.png")
    formulas, rendered = book.typeset_maths(dom)
    assert formulas >= 2 and rendered == formulas, (formulas, rendered)
    assert "Math Font Not Found" not in dom and "Math Processing Error" not in dom
    assert (tmp_path / "check.png").stat().st_size > 10_000
    assert 'data-table-scroll="auto:true"' in dom, "a table wider than the column scrolls (book/_static/ipcv.css)"

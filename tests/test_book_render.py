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
from ipcv.book import build as book  # noqa: E402

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


def tables_page(generated: Path) -> str:
    """The book's widest tables, made by the functions that make them in the book: the paper's Tables 1
    and 2 as notebook 08 shows them (pandas Styler HTML) and as the status page does (CSV tables), the
    status page's vision-tower latency, notebook 05's table of the bound (Markdown, maths in the
    header), notebook 07's Table 4 and the status page's claims table."""
    import numpy as np
    import pandas as pd

    from ipcv.book import accuracy, efficiency, report, status

    generated.mkdir(parents=True)
    parts = ["# Tables\n"]
    for name in ("table1", "table2"):
        shown = accuracy.readable(accuracy.paper_table(name))
        parts.append(shown.style.format(precision=1).hide(axis="index").to_html() + "\n")
    tables = status.tables(generated / "results")
    for name in ("paper_table1_summary", "paper_table1_scores", "paper_table2_scores", "paper_table4"):
        tables[name].to_csv(generated / f"{name}.csv", index=False)
        parts.append(f"```{{csv-table}}\n:file: _generated/{name}.csv\n:header-rows: 1\n```\n")
    parts.append(book.tower_latency_page())
    parts.append(book.markdown_table(tables["claims"].assign(where="—")))
    rng = np.random.default_rng(0)
    columns = ["B", "d_H", "L_proof", "L_matched", "bound", "max_error", "within", "identity"]
    bound = pd.DataFrame(rng.uniform(1, 200, (4, len(columns))), columns=columns).assign(
        keep_ratio=[0.65, 0.5, 0.35, 0.2], within=True
    )
    parts.append(report.markdown_table(bound[["keep_ratio", *columns]], 3))
    loose = ["median_error", "median_norm", "median_slack", "min_slack", "lemma_slack", "above_norm"]
    parts.append(report.markdown_table(pd.DataFrame(rng.uniform(0, 50, (4, 6)), columns=loose), 2))
    table4 = efficiency.shown_table4(efficiency.table4(efficiency.load()))
    parts.append(table4.style.format(precision=1, na_rep="–").hide(axis="index").to_html() + "\n")
    return "\n".join(parts)


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
    (root / "book" / "tables.md").write_text(tables_page(root / "book" / "_generated"))
    toc = "format: jb-book\nroot: book/check\nchapters:\n  - file: book/other\n  - file: book/tables\n"
    (root / "_toc.yml").write_text(toc)
    book.copy_mathjax(root / "book" / "_generated" / "static" / "mathjax")
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "-W", "-n", "--keep-going"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "_build" / "html"


@pytest.mark.subprocess
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
@pytest.mark.subprocess
def test_maths_is_typeset_in_headless_chromium(small_book, tmp_path):
    dom = book.render(small_book / "book" / "check.html", tmp_path / "profile", tmp_path / "check.png")
    formulas, rendered = book.typeset_maths(dom)
    assert formulas >= 2 and rendered == formulas, (formulas, rendered)
    assert "Math Font Not Found" not in dom and "Math Processing Error" not in dom
    assert (tmp_path / "check.png").stat().st_size > 10_000
    assert 'data-table-scroll="auto:true"' in dom, "a table wider than the column scrolls (book/_static/ipcv.css)"


@pytest.mark.skipif(NO_BROWSER, reason="no chromium (apt-get install -y chromium)")
@pytest.mark.subprocess
def test_the_books_widest_tables_fit_the_column_at_1280_px(small_book, tmp_path):
    """No table of the kinds the book shows needs a sideways scroll in a 1280-pixel window (compact
    table CSS, headers that wrap, the key columns first, long names wrapped or moved out of tables).
    ``python -m ipcv.book check`` measures every table of a full build the same way."""
    rows = book.table_widths(small_book / "book" / "tables.html", tmp_path / "profile")
    tables = [r for r in rows if r["kind"] == "table"]
    assert len(tables) >= 10, rows
    assert all(700 < r["column"] < 800 for r in tables), "at 1280 px the article is about 750 px wide"
    wide = [r for r in tables if r["content"] > r["box"] + 1]
    assert wide == [], wide
    assert book.wide_tables(small_book / "book" / "check.html", tmp_path / "p2"), "the 400-character cell scrolls"

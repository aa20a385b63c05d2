"""The notebooks, their smoke copies for nbval and the book runner (fast: no book notebook is executed; a
one-cell notebook checks how the runner shuts its kernel down)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

nbformat = pytest.importorskip("nbformat")
yaml = pytest.importorskip("yaml")
pytest.importorskip("papermill")

from ipcv.book import build as book  # noqa: E402

SOURCES = book.notebooks()


def _code(nb, skip_injected: bool = True) -> list[str]:
    return [
        c.source
        for c in nb.cells
        if c.cell_type == "code" and not (skip_injected and "injected-parameters" in c.metadata.get("tags", []))
    ]


METHOD_SECTIONS = ("01", "02", "03", "04", "05", "06")  # the paper's method, section by section
EXPERIMENTS = ("07", "08")  # the paper's experiments: efficiency, accuracy
BEYOND = ("09",)  # beyond the paper: the 2026 baselines


def test_there_are_notebooks():
    assert [p.stem[:2] for p in SOURCES] == [*METHOD_SECTIONS, *EXPERIMENTS, *BEYOND]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "paper" in nb.cells[0].source.splitlines()[0], "the title names the paper section"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    if path.stem[:2] in METHOD_SECTIONS + BEYOND:  # run on an encoder: the weights, device and images are parameters
        assert {"model", "device", "dtype", "images", "image_size"} <= book.parameters_of(path)
    assert any(c.cell_type == "markdown" and c.source.startswith("## What we saw") for c in nb.cells)
    assert any(c.source.startswith("# NBVAL_CHECK_OUTPUT") for c in nb.cells if c.cell_type == "code")
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), (
        "sources are committed without outputs"
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_smoke_copy_is_in_sync(path):
    smoke = book.SMOKE_DIR / path.name
    assert smoke.exists(), f"missing {smoke}: run `python -m ipcv.book smoke`"
    source, copy = nbformat.read(path, as_version=4), nbformat.read(smoke, as_version=4)
    assert _code(copy) == _code(source), (
        f"{smoke.name} is stale: run `python -m ipcv.book smoke --only {path.stem[:2]}`"
    )
    injected = [c for c in copy.cells if "injected-parameters" in c.metadata.get("tags", [])]
    expected = {k: v for k, v in book.SMOKE.items() if k in book.parameters_of(path)}
    # papermill injects a cell only when it has parameters to inject (07 and 08 run on their defaults)
    assert copy.metadata.papermill["parameters"] == expected and len(injected) == (1 if expected else 0)
    text = smoke.read_text()
    assert '"duration"' not in text and '"start_time"' not in text and str(book.ROOT) not in text


def test_parse_value():
    assert book.parse_value("[0.5, 0.2]") == [0.5, 0.2]
    assert book.parse_value("448") == 448 and book.parse_value("None") is None
    assert book.parse_value("cuda") == "cuda"
    assert book.parse_value("Qwen/Qwen2-VL-7B-Instruct") == "Qwen/Qwen2-VL-7B-Instruct"


def test_results_variable_matches_report():
    from ipcv.book import report

    assert book.RESULTS_ENV == report.RESULTS_ENV


def test_clean_keeps_checked_outputs_only_for_smoke():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)"),
                                         nbformat.v4.new_code_cell("plot()")])  # fmt: skip
    for cell in nb.cells:
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
        cell.execution_count = 1
    book.clean(nb, checked_outputs_only=True)
    assert len(nb.cells[0].outputs) == 1 and nb.cells[1].outputs == [] and nb.cells[1].execution_count is None


def test_clean_strips_papermill_metadata():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("x = 2")])
    nb.metadata["papermill"] = {"duration": 3.2, "input_path": "/a", "parameters": {"x": 2}}
    nb.cells[1].metadata.update(tags=["injected-parameters"], papermill={"duration": 0.1}, execution={"a": 1})
    book.clean(nb)
    assert nb.metadata.papermill == {"parameters": {"x": 2}}
    assert nb.cells[1].metadata == {"tags": ["injected-parameters", "remove-cell"]}
    assert "duration" not in json.dumps(nb)


def test_toc_pages_exist():
    toc = yaml.safe_load((book.ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    for f in files:
        if f.startswith("book/notebooks/"):
            assert (book.SOURCES / (f.split("/")[-1] + ".ipynb")).exists(), f
        else:
            assert (book.ROOT / f"{f}.md").exists(), f
    assert sorted(f.split("/")[-1] for f in files if f.startswith("book/notebooks/")) == [p.stem for p in SOURCES]


def test_status_page_includes_existing_paper_tables():
    text = (book.ROOT / "book" / "status.md").read_text()
    for line in text.splitlines():
        if line.startswith(":file: ../data/"):
            assert (book.ROOT / "book" / line.split(":file: ")[1]).resolve().exists(), line


# --- install, repository address, markers ----------------------------------------------------------


def _requirement_names(requirements) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names = set()
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) != "ipcv":  # the extras' references to each other
            names.add(canonicalize_name(req.name))
    return names


def test_environment_yml_lists_every_dependency_of_the_extras():
    import tomllib

    project = tomllib.loads((book.ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = _requirement_names(project["dependencies"])
    for extra in ("pretrained", "test", "book", "eval"):  # eval: the lmms-eval plugin, where present
        wanted |= _requirement_names(extras.get(extra, []))
    assert "accelerate" in wanted, "device_map (notebooks, released weights) needs accelerate"
    env = yaml.safe_load((book.ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = _requirement_names(p for p in pip if not p.startswith("-"))
    assert wanted - listed == set(), f"environment.yml lacks {sorted(wanted - listed)}"
    assert "-e .[dev]" in pip


def test_install_cells_read_the_one_repository_address():
    url = book.repository_url()
    assert url == "" or url.startswith("https://")
    paths = [*SOURCES, *(book.SMOKE_DIR / p.name for p in SOURCES)]
    for path in [p for p in paths if p.exists()]:
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(book.INSTALL_MARK)]
        assert [c.source for c in cells] == [book.install_cell(url)], f"{path}: run `python -m ipcv.book sync-url`"
        assert "remove-cell" in cells[0].metadata.get("tags", [])
    for path in [*SOURCES, *book.ROOT.glob("book/*.md"), book.ROOT / "README.md"]:
        assert "ipcv-project" not in path.read_text(), f"{path} still names the placeholder address"


def test_repository_url_must_be_https_or_empty(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: github.com/x/y\n")
    with pytest.raises(ValueError, match=r"repository\.url='github\.com/x/y' must be an https:// address or empty"):
        book.repository_url(config)
    config.write_text("repository:\n  url: https://github.com/x/y\n")
    assert book.repository_url(config) == "https://github.com/x/y"
    assert 'REPOSITORY = "https://github.com/x/y"' in book.install_cell("https://github.com/x/y").replace("'", '"')


def test_book_copies_hide_the_nbval_markers():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)")])
    smoke = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)")])
    book.clean(nb)
    book.clean(smoke, checked_outputs_only=True)
    assert nb.cells[0].source == "print(1)"
    assert smoke.cells[0].source == "# NBVAL_CHECK_OUTPUT\nprint(1)"  # nbval keeps them


def _fake_runs(monkeypatch, seconds, fail_at=None):
    """run_all over the first notebooks with execute faked: each takes ``seconds``, the one at ``fail_at`` fails."""
    import papermill

    calls = []

    def execute(src, dst, params, env, smoke, desc):
        calls.append(desc)
        if len(calls) == fail_at:
            raise papermill.PapermillExecutionError(3, 1, "x = f()", "ValueError", "bad", ["Traceback ..."])
        return seconds[len(calls) - 1]

    monkeypatch.setattr(book, "execute", execute)
    monkeypatch.setattr(book, "parameters_of", lambda path: set())
    return calls


def test_run_all_shows_where_the_build_is_and_ends_with_every_time(monkeypatch, capsys):
    paths = SOURCES[:3]
    calls = _fake_runs(monkeypatch, [57.2, 16.0, 191.4])
    book.run_all(paths, book.EXECUTED, {})
    out = capsys.readouterr().out.splitlines()
    assert calls == [f"[{i}/3] {p.stem}" for i, p in enumerate(paths, 1)]  # papermill's per-cell bar, labelled
    assert out[0] == f"[1/3] notebooks/{paths[0].name} (defaults)"
    assert out[1] == f"      done in 57 s -> book/notebooks/{paths[0].name}"
    assert re.fullmatch(rf"\[2/3\] notebooks/{paths[1].name} \(defaults\); \d+ s into the build", out[2])
    assert out[5] == f"      done in 3 min 11 s -> book/notebooks/{paths[2].name}"
    assert re.fullmatch(r"executed 3 notebook\(s\) in \d+ s:", out[6])
    assert [line.split() for line in out[7:]] == [
        [paths[0].stem, "57", "s"], [paths[1].stem, "16", "s"], [paths[2].stem, "3", "min", "11", "s"],
    ]  # fmt: skip


def test_run_all_stops_at_a_failure_with_the_times_so_far(monkeypatch, capsys):
    _fake_runs(monkeypatch, [5.0, 6.0, 7.0], fail_at=2)
    with pytest.raises(SystemExit) as e:
        book.run_all(SOURCES[:3], book.EXECUTED, {})
    out, err = capsys.readouterr()
    assert e.value.code == 1 and f"FAILED: notebooks/{SOURCES[1].name}, cell 1: ValueError: bad" in err
    assert re.search(r"executed 1 of 3 notebook\(s\) in \d+ s:\n  " + SOURCES[0].stem + r"\s+5 s\n$", out)


@pytest.mark.subprocess
def test_the_kernel_gets_no_interrupt_when_it_is_shut_down(tmp_path, capsys):
    """jupyter_client interrupts (SIGINT) every kernel it shuts down; after the last cell that only makes
    ipykernel log "KeyboardInterrupt caught in kernel" when it lands mid-request. The cell below makes the
    kernel record a SIGINT between requests (where it normally ignores one): none may come."""
    marker = tmp_path / "sigint"
    cell = (
        "def record(signum, frame):\n"
        f"    open({str(marker)!r}, 'a').write('SIGINT')\n"
        "get_ipython().kernel.saved_sigint_handler = record  # the handler the kernel restores after this cell"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nb.metadata["kernelspec"] = {"name": book.KERNEL, "display_name": "Python 3", "language": "python"}
    src = tmp_path / "signal.ipynb"
    nbformat.write(nb, src)
    book.execute(src, tmp_path / "out.ipynb", {}, desc="[1/1] signal")
    assert (tmp_path / "out.ipynb").exists() and not marker.exists()
    err = capsys.readouterr().err
    assert "[1/1] signal: 100%" in err and "KeyboardInterrupt" not in err


def test_interrupting_a_running_cell_still_works(monkeypatch):
    from jupyter_client import AsyncKernelManager

    sent = []

    async def interrupt(self):
        sent.append(self.shutting_down)

    monkeypatch.setattr(AsyncKernelManager, "_async_interrupt_kernel", interrupt)
    km = book.kernel_manager()()
    for shutting_down in (False, True, False):
        km.shutting_down = shutting_down
        asyncio.run(km.interrupt_kernel())
    assert sent == [False, False]  # a timeout's interrupt goes through; the one at shutdown does not

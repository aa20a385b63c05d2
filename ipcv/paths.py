"""Where the project's data lives: the ``data/`` folder of the checkout (the paper's tables, the benchmark
results, the evaluation store), and the checkout itself for the book's build.

Found, in order: the ``IPCV_DATA_DIR`` environment variable (a ``data/`` folder anywhere); the first folder at
or above the working directory holding ``data/paper`` (a clone you work in); the checkout the package was
installed from in editable mode (``pip install -e``, read from the installation's own ``direct_url.json``). An install
from a wheel ships no data: the functions that need it then say so and how to point at a checkout.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

ENV = "IPCV_DATA_DIR"


def _editable_checkout() -> Path | None:
    try:
        text = metadata.distribution("ipcv").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    info = json.loads(text)
    url = urlsplit(info.get("url", ""))
    if url.scheme != "file" or not info.get("dir_info", {}).get("editable"):
        return None
    return Path(unquote(url.path))


def _holds_data(folder: Path) -> bool:
    return (folder / "data" / "paper").is_dir()


def repository() -> Path:
    """The checkout: the folder holding ``data/``, ``notebooks/`` and the book's configuration.
    FileNotFoundError (with the fix) when there is none."""
    given = os.environ.get(ENV)
    if given:
        return Path(given).expanduser().resolve().parent
    for folder in (Path.cwd(), *Path.cwd().parents):
        if _holds_data(folder):
            return folder
    checkout = _editable_checkout()
    if checkout is not None and _holds_data(checkout):
        return checkout
    raise FileNotFoundError(
        "no ipcv checkout found (a folder holding data/paper): run from a clone of the repository, install it "
        f"with pip install -e, or set {ENV} to its data/ folder"
    )


def data_dir() -> Path:
    """The ``data/`` folder (see the module docstring)."""
    given = os.environ.get(ENV)
    return Path(given).expanduser().resolve() if given else repository() / "data"

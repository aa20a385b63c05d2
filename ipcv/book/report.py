"""What ran where, and printing numbers so that the notebook tests (nbval) can compare them.

Numbers a test compares are shown as fixed text with a fixed number of decimals (:func:`show_table`,
a Markdown table with its columns named in words; :func:`print_table`, :func:`print_values`): never
timings, never DataFrame HTML (its element ids change from run to run).
"""

from __future__ import annotations

import html
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers

import ipcv
from ipcv.measure import device_name as _device_name

from ..analysis.encoders import Encoder
from .names import column

RESULTS_ENV = "IPCV_BOOK_RESULTS"


def device_name(device: str | torch.device) -> str:
    """Human name of a device: the GPU model, or the CPU model and its thread count."""
    return _device_name(torch.device(device))


class RunNote:
    """The reusable "where these numbers come from" note: an admonition in the book (HTML), a
    plain paragraph elsewhere."""

    def __init__(self, weights: str, device: str, trained: bool):
        self.weights, self.device, self.trained = weights, device, trained

    def lines(self) -> list[str]:
        versions = f"ipcv {ipcv.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
        runs = (
            "Every cell runs unchanged on a GPU with other weights: set the parameters "
            '`device="cuda"`, `dtype="bfloat16"` and `model="Qwen/Qwen2-VL-7B-Instruct"` '
            "(needs the released weights: a model hub or a local copy)."
        )
        fidelity = (
            ""
            if self.trained
            else " These weights are untrained: the numbers below show what the code does, and every verdict on "
            'quality reads "not a result: random weights".'
        )
        return [f"Weights: {self.weights}.{fidelity}", f"Device: {self.device}; {versions}.", runs]

    def _repr_html_(self) -> str:
        body = "".join(f"<p>{html.escape(line).replace('`', '')}</p>" for line in self.lines())
        return f'<div class="admonition note"><p class="admonition-title">Where these numbers come from</p>{body}</div>'

    def __repr__(self) -> str:
        return "\n".join(self.lines())


def run_note(enc: Encoder, device: str | torch.device) -> RunNote:
    """The note for this notebook's encoder and device; display it near the top. During a book
    build it also saves them (``run.csv``) for the status page."""
    note = RunNote(enc.label, device_name(device), enc.trained)
    save_summary("run", {"weights": note.weights, "device": note.device, "trained": note.trained})
    return note


def fmt(value, digits: int = 3) -> str:
    """A number as text with ``digits`` decimals (ints and strings unchanged)."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def print_values(digits: int = 3, **values) -> None:
    """``name: value`` lines, floats rounded to ``digits`` decimals."""
    width = max(map(len, values))
    for name, value in values.items():
        print(f"{name:<{width}}  {fmt(value, digits)}")


def print_table(df: pd.DataFrame, digits: int = 3) -> None:
    """A DataFrame as fixed-width text, floats rounded to ``digits`` decimals, no index."""
    text = df.to_string(index=False, float_format=lambda x: f"{x:.{digits}f}")
    print(text)


SETTINGS = {"keep_ratio"}  # columns of settings, written as given (0.35), not to a number of decimals


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, digits: int = 3, labels: Mapping[str, str] | None = None) -> str:
    """``df`` as a Markdown table: columns named in words and maths (:func:`ipcv.analysis.names.column`,
    or ``labels``), numbers right-aligned with ``digits`` decimals, yes / no for booleans, no index."""
    labels = labels or {}
    heads = [labels.get(c) or column(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    settings = [c in SETTINGS for c in df.columns]  # e.g. 0.35, not 0.350
    lines += [
        "| " + " | ".join(f"{v:g}" if s else _cell(v, digits) for v, s in zip(row, settings)) + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def show_table(df: pd.DataFrame, digits: int = 3, labels: Mapping[str, str] | None = None) -> None:
    """Show ``df`` as a table in the notebook and the book (:func:`markdown_table`: its header wraps in
    the text column, maths typeset). The output is fixed text, so nbval compares it like a print."""
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(df, digits, labels)))


def save_summary(name: str, table: pd.DataFrame | Mapping) -> Path | None:
    """Write ``table`` to ``$IPCV_BOOK_RESULTS/<name>.csv`` when that variable is set (the book
    build sets it, to show the numbers on its status page); do nothing otherwise."""
    folder = os.environ.get(RESULTS_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    (table if isinstance(table, pd.DataFrame) else pd.DataFrame([dict(table)])).to_csv(path, index=False)
    return path

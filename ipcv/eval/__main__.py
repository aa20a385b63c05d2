"""``python -m ipcv.eval``: run the paper's experiments through lmms-eval into the results store.

    python -m ipcv.eval list                                   # the sweeps, their settings and tasks
    python -m ipcv.eval table1 --limit 20                      # Table 1 on Qwen/Qwen2-VL-7B-Instruct
    python -m ipcv.eval table4 --model /models/Qwen2-VL-7B-Instruct --model-args use_flash_attention_2=true
    python -m ipcv.eval table1 --processes 8                   # data parallel: accelerate launch per setting
    python -m ipcv.eval custom --tasks pope,mme --setting ours=IPCV:0.35,DART:0.35 --setting base=none,none

Every setting runs as one ``lmms-eval`` process (all its missing tasks at once, the harness's CLI with
``--model ipcv_<family>``; with ``--processes N`` under ``accelerate launch --num_processes N``), then
one row per task is added to the store (``data/results/results.jsonl``): lmms-eval's metrics, ipcv's
per-task latency / visual tokens / FLOPs / KV, the device, the versions and the date. Cells already in
the store are skipped, so a sweep killed at any point and started again ends with exactly the rows of
an uninterrupted one. lmms-eval's own outputs (results JSON, per-sample logs) stay under ``--raw-dir``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .. import __version__
from . import store
from .measure import summarize
from .methods import format_method, parse_method
from .sweeps import FAMILY_MODELS, SWEEPS, TASK_NOTES, Setting, Sweep, sweeps

DEFAULT_STORE = Path("data/results/results.jsonl")
DEFAULT_RAW = Path("data/results/raw")


class CellError(RuntimeError):
    """An lmms-eval run that ended without results for some of its tasks."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:120]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _custom(args) -> Sweep:
    if not args.tasks:
        raise SystemExit("custom: give --tasks (lmms-eval task names, comma-separated)")
    if not args.setting:
        raise SystemExit("custom: give at least one --setting NAME=VISION,LANGUAGE (e.g. ours=IPCV:0.35,DART:0.35)")
    settings = []
    for item in args.setting:
        name, eq, pair = item.partition("=")
        parts = pair.split(",")
        if not eq or len(parts) != 2:
            raise SystemExit(f"--setting {item!r}: write NAME=VISION,LANGUAGE, e.g. ours=IPCV:0.35,DART:0.35")
        v, lang = parse_method(parts[0], "vision"), parse_method(parts[1], "language")
        settings.append(Setting(name, format_method(v), format_method(lang)))
    family = args.family or "qwen2_vl"
    return Sweep("custom", family, args.model, tuple(args.tasks.split(",")), tuple(settings), "custom settings")


def _select(sweep: Sweep, args) -> Sweep:
    """The sweep with the command line's model, family and task subset applied."""
    family = args.family or sweep.family
    if family not in FAMILY_MODELS:
        raise SystemExit(f"--family {family!r} is not allowed: use one of {', '.join(FAMILY_MODELS)}")
    tasks = sweep.tasks
    if args.tasks and sweep.name != "custom":
        wanted = args.tasks.split(",")
        unknown = [t for t in wanted if t not in sweep.tasks]
        if unknown:
            raise SystemExit(
                f"--tasks: {', '.join(unknown)} not in sweep {sweep.name}; allowed: {', '.join(sweep.tasks)}"
            )
        tasks = tuple(wanted)
    return Sweep(sweep.name, family, args.model or sweep.model, tasks, sweep.settings, sweep.description)


def _command(sweep: Sweep, setting: Setting, tasks: list[str], run_dir: Path, args) -> list[str]:
    model_args = [f"pretrained={sweep.model}", f"vision={setting.vision}", f"language={setting.language}"]
    model_args.append(f"ipcv_log={run_dir / 'ipcv_calls.jsonl'}")
    if args.model_args:
        model_args.append(args.model_args)
    if args.processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.processes), "-m"]
    else:
        cmd = [sys.executable, "-m"]
    cmd += ["lmms_eval", "--model", FAMILY_MODELS[sweep.family], "--model_args", ",".join(model_args)]
    cmd += ["--tasks", ",".join(tasks), "--batch_size", str(args.batch_size), "--log_samples"]
    cmd += ["--output_path", str(run_dir / "lmms_eval")]
    if args.limit is not None:
        cmd += ["--limit", str(args.limit)]
    if args.include_path:
        cmd += ["--include_path", args.include_path]
    return cmd


def _answers_sha(run_dir: Path, task: str) -> tuple[str | None, int]:
    files = sorted(glob.glob(str(run_dir / "lmms_eval" / "**" / f"*_samples_{task}.jsonl"), recursive=True))
    if not files:
        return None, 0
    answers = []
    for line in Path(files[-1]).read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            answers.append([doc.get("doc_id"), doc.get("filtered_resps")])
    answers.sort(key=lambda a: str(a[0]))
    return hashlib.sha256(json.dumps(answers).encode()).hexdigest(), len(answers)


def _rows(sweep: Sweep, setting: Setting, tasks: list[str], run_dir: Path, args) -> list[dict]:
    found = sorted(glob.glob(str(run_dir / "lmms_eval" / "**" / "*_results.json"), recursive=True))
    if not found:
        raise CellError("lmms-eval wrote no results file")
    results = json.loads(Path(found[-1]).read_text())
    calls = []
    for log in sorted(run_dir.glob("ipcv_calls.jsonl*")):
        calls += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows, missing = [], []
    for task in tasks:
        metrics = results.get("results", {}).get(task)
        if metrics is None:
            missing.append(task)
            continue
        task_calls = [c for c in calls if c["task"] == task]
        sha, n = _answers_sha(run_dir, task)
        rows.append(
            {
                "model": sweep.model,
                "family": sweep.family,
                "vision": setting.vision,
                "language": setting.language,
                "task": task,
                "limit": args.limit,
                "setting": setting.name,
                "table": setting.table,
                "table_setting": setting.setting,
                "method": setting.method,
                "protocol": args.protocol if setting.table else None,
                "sweep": sweep.name,
                "metrics": {k.replace(",none", ""): v for k, v in metrics.items() if k != "alias"},
                "ipcv": summarize([{k: v for k, v in c.items() if k not in ("task", "device")} for c in task_calls]),
                "answers_sha256": sha,
                "samples": n,
                "device": task_calls[0]["device"] if task_calls else None,
                "processes": args.processes,
                "batch_size": args.batch_size,
                "versions": {
                    "ipcv": __version__,
                    "lmms_eval": _version("lmms_eval") or results.get("lmms_eval_version"),
                    "transformers": _version("transformers"),
                    "torch": _version("torch"),
                },
                "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "raw": str(run_dir),
            }
        )
    if missing:
        raise CellError(f"lmms-eval's results have no entry for {', '.join(missing)}")
    return rows


def check_tasks(tasks, include_path: str | None) -> None:
    """Refuse task names lmms-eval does not know (it would only log an error and exit 0), with the
    closest known names."""
    import difflib

    from lmms_eval.tasks import TaskManager

    known = set(TaskManager(include_path=include_path).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hints = {t: difflib.get_close_matches(t, known, n=5) for t in unknown}
        lines = [f"  {t}: not an lmms-eval task; close: {', '.join(h) or 'none'}" for t, h in hints.items()]
        raise SystemExit("--tasks:\n" + "\n".join(lines) + "\n(all names: lmms-eval --tasks list)")


def not_built(setting: Setting, family: str | None = None) -> str | None:
    """Why the library cannot run ``setting`` yet, or None: a settings switch that is refused whatever
    the model, or (given the sweep's ``family``) a ViT-side baseline's ``output="reduced"`` on a family
    that does not have it (:data:`ipcv.api.REDUCED_FAMILIES`)."""
    from ..api import REDUCED_FAMILIES

    for text, side in ((setting.vision, "vision"), (setting.language, "language")):
        settings = parse_method(text, side)
        if family is not None and getattr(settings, "output", "full") == "reduced" and family not in REDUCED_FAMILIES:
            return (
                f"output='reduced' is built for the mRoPE families {REDUCED_FAMILIES} only, not for {family!r} "
                "(see the book's page on differences)"
            )
        try:
            if settings is not None:
                settings.check_depth(1 << 20)  # any depth: only what no model can run raises here
        except NotImplementedError as e:
            return str(e)
        except ValueError:
            pass
    return None


def run(sweep: Sweep, args) -> int:
    """Run every missing cell of ``sweep``; returns the number of settings that failed or cannot run."""
    from tqdm.auto import tqdm

    done = {store.row_key(r) for r in store.load(args.store)}
    key = lambda s, t: (sweep.model, s.vision, s.language, t, args.limit)  # noqa: E731
    cells = len(sweep.settings) * len(sweep.tasks)
    failed = 0
    with tqdm(total=cells, desc=f"{sweep.name} cells", unit="cell") as bar:
        for setting in sweep.settings:
            tasks = [t for t in sweep.tasks if key(setting, t) not in done]
            bar.update(len(sweep.tasks) - len(tasks))
            if not tasks:
                continue
            bar.set_postfix_str(setting.name)
            reason = not_built(setting, sweep.family)
            if reason is not None:
                failed += 1
                tqdm.write(f"[{sweep.name}] {setting.name}: not run: {reason}")
                bar.update(len(tasks))
                continue
            run_dir = (
                Path(args.raw_dir) / _slug(sweep.model) / _slug(f"{setting.vision}__{setting.language}__{args.limit}")
            )
            shutil.rmtree(run_dir, ignore_errors=True)  # what a killed run left behind
            run_dir.mkdir(parents=True)
            cmd = _command(sweep, setting, tasks, run_dir, args)
            with open(run_dir / "lmms_eval.log", "w") as log:
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                added = store.append(args.store, _rows(sweep, setting, tasks, run_dir, args))
                done |= {key(setting, t) for t in tasks}
                bar.update(added)
            except CellError as e:
                failed += 1
                tail = (run_dir / "lmms_eval.log").read_text()[-3000:]
                tqdm.write(
                    f"[{sweep.name}] {setting.name}: {e} (exit {code}); log {run_dir / 'lmms_eval.log'}:\n{tail}"
                )
                bar.update(len(tasks))
    return failed


def _list(protocol: str) -> None:
    for sweep in sweeps(protocol).values():
        print(f"{sweep.name}: {sweep.description} ({sweep.family}, {sweep.model})")
        print(f"  tasks: {', '.join(sweep.tasks)}")
        for s in sweep.settings:
            print(f"  {s.name:<32} vision={s.vision}  language={s.language}")
    print("task notes:")
    for task, note in TASK_NOTES.items():
        print(f"  {task}: {note}")


def main(argv: list[str] | None = None) -> int:
    names = ["list", "custom", *SWEEPS]
    p = argparse.ArgumentParser(prog="python -m ipcv.eval", description=__doc__.split("\n")[0])
    p.add_argument("sweep", help=f"one of: {', '.join(names)}")
    p.add_argument("--model", help="hub id or local directory (default: the model the paper used for the sweep)")
    p.add_argument("--family", help=f"model family: {', '.join(FAMILY_MODELS)} (default: the sweep's)")
    p.add_argument("--tasks", help="comma-separated lmms-eval tasks (a named sweep: a subset of its tasks)")
    p.add_argument("--setting", action="append", help="custom: NAME=VISION,LANGUAGE (repeatable)")
    p.add_argument("--protocol", default="paper", help="paper (what the authors ran) or official (default: paper)")
    p.add_argument("--limit", type=int, help="lmms-eval --limit: first N documents per task (smoke runs)")
    p.add_argument("--model-args", help="extra lmms-eval model args, e.g. use_flash_attention_2=true or device=cpu")
    p.add_argument("--include-path", help="lmms-eval --include_path: a directory of extra task YAMLs")
    p.add_argument("--processes", type=int, default=1, help="data-parallel processes (accelerate launch), one per GPU")
    p.add_argument("--batch-size", type=int, default=1, help="lmms-eval batch size (the paper: 1)")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help=f"results store (default {DEFAULT_STORE})")
    p.add_argument("--raw-dir", type=Path, default=DEFAULT_RAW, help=f"lmms-eval outputs (default {DEFAULT_RAW})")
    p.add_argument("--dry-run", action="store_true", help="print the cells and the commands, run nothing")
    args = p.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ:
        p.error("do not start ipcv.eval under accelerate/torchrun: it launches lmms-eval itself; use --processes N")
    if args.sweep not in names:
        p.error(f"unknown sweep {args.sweep!r}; allowed: {', '.join(names)}")
    if args.processes < 1 or args.batch_size < 1:
        p.error("--processes and --batch-size must be >= 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    try:
        if args.sweep == "list":
            _list(args.protocol)
            return 0
        sweep = _custom(args) if args.sweep == "custom" else sweeps(args.protocol)[args.sweep]
    except ValueError as e:
        p.error(str(e))
    if sweep.name == "custom" and not args.model:
        p.error("custom: give --model (hub id or local directory)")
    sweep = _select(sweep, args)
    if args.dry_run:
        for s in sweep.settings:
            print(" ".join(_command(sweep, s, list(sweep.tasks), Path(args.raw_dir) / "RUN", args)))
        return 0
    if (
        args.model
        and not Path(args.model).exists()
        and (args.model.startswith((".", "/", "~")) or args.model.count("/") != 1)
    ):
        p.error(f"--model {args.model!r}: no such local directory (a hub id is written owner/name)")
    check_tasks(sweep.tasks, args.include_path)
    failed = run(sweep, args)
    if failed:
        print(f"{failed} setting(s) failed or cannot run yet (see above); their cells are not in the store")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

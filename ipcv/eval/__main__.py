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

Before the first cell the whole sweep is checked (:func:`plan`; ``--dry-run`` runs the same checks,
prints what a real run would do and runs nothing): the tasks are lmms-eval's, ``--model`` can load
and is of ``--family`` (:mod:`ipcv.eval.checks`), the store is readable; the settings a real run
refuses (not built for the family) are named. A model that cannot load stops the sweep before any
lmms-eval process starts, or at the first cell whose lmms-eval process could not load it, with the
loader's message and the fix.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..measure import summarize
from ..method_strings import format_method, parse_method
from ..models import registry
from . import store
from .checks import MODEL_FIX, Model, ModelCannotLoad, check_model, load_error, task_problem
from .plugin import harnesses
from .sweeps import SWEEPS, TASK_NOTES, Setting, Sweep, sweeps

FAMILIES = harnesses()  # --family -> how lmms-eval runs it (the adapters' harness rows)

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


def _task_list(text: str) -> tuple[str, ...]:
    """``--tasks``' names; refuses empty names and repeats."""
    tasks = tuple(t.strip() for t in text.split(","))
    if "" in tasks:
        raise SystemExit(f"--tasks {text!r}: an empty task name; write lmms-eval task names separated by commas")
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise SystemExit(f"--tasks {text!r}: {', '.join(twice)} given more than once")
    return tasks


def _custom(args) -> Sweep:
    if not args.tasks:
        raise SystemExit("custom: give --tasks (lmms-eval task names, comma-separated)")
    if not args.setting:
        raise SystemExit("custom: give at least one --setting NAME=VISION,LANGUAGE (e.g. ours=IPCV:0.35,DART:0.35)")
    if args.protocol is not None:
        raise SystemExit("--protocol applies to the named sweeps; custom's settings are the --setting ones")
    settings: list[Setting] = []
    for item in args.setting:
        name, eq, pair = item.partition("=")
        parts = pair.split(",")
        if not eq or not name.strip() or len(parts) != 2:
            raise SystemExit(f"--setting {item!r}: write NAME=VISION,LANGUAGE, e.g. ours=IPCV:0.35,DART:0.35")
        v, lang = parse_method(parts[0], "vision"), parse_method(parts[1], "language")
        setting = Setting(name.strip(), format_method(v), format_method(lang))
        for other in settings:
            if other.name == setting.name:
                raise SystemExit(f"--setting {item!r}: the name {setting.name!r} is given twice")
            if (other.vision, other.language) == (setting.vision, setting.language):
                raise SystemExit(f"--setting {item!r}: the same vision and language as --setting {other.name}")
        settings.append(setting)
    family = args.family or "qwen2_vl"
    return Sweep("custom", family, args.model, _task_list(args.tasks), tuple(settings), "custom settings")


def _select(sweep: Sweep, args) -> Sweep:
    """The sweep with the command line's model, family and task subset applied."""
    family = args.family or sweep.family
    if family not in FAMILIES:
        raise SystemExit(f"--family {family!r} is not allowed: use one of {', '.join(FAMILIES)}")
    tasks = sweep.tasks
    if args.tasks and sweep.name != "custom":
        wanted = _task_list(args.tasks)
        unknown = [t for t in wanted if t not in sweep.tasks]
        if unknown:
            raise SystemExit(
                f"--tasks: {', '.join(unknown)} not in sweep {sweep.name}; allowed: {', '.join(sweep.tasks)}"
            )
        tasks = wanted
    return Sweep(sweep.name, family, args.model or sweep.model, tasks, sweep.settings, sweep.description)


_OWN_MODEL_ARGS = ("pretrained", "vision", "language", "ipcv_log")


def _check_model_args(text: str | None) -> None:
    """``--model-args``: key=value pairs, none of those ipcv.eval sets itself."""
    if not text:
        return
    for item in text.split(","):
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"--model-args {text!r}: {item!r} is not key=value; write e.g. device=cpu,dtype=bfloat16")
        if key.strip() in _OWN_MODEL_ARGS:
            raise SystemExit(
                f"--model-args {text!r}: {key.strip()} is set by ipcv.eval (--model, the settings, its log); "
                f"leave out {', '.join(_OWN_MODEL_ARGS)}"
            )


def _run_dir(sweep: Sweep, setting: Setting, args) -> Path:
    return Path(args.raw_dir) / _slug(sweep.model) / _slug(f"{setting.vision}__{setting.language}__{args.limit}")


def _command(sweep: Sweep, setting: Setting, tasks: list[str], run_dir: Path, args) -> list[str]:
    model_args = [f"pretrained={sweep.model}", f"vision={setting.vision}", f"language={setting.language}"]
    model_args.append(f"ipcv_log={run_dir / 'ipcv_calls.jsonl'}")
    if args.model_args:
        model_args.append(args.model_args)
    if args.processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.processes), "-m"]
    else:
        cmd = [sys.executable, "-m"]
    cmd += ["lmms_eval", "--model", FAMILIES[sweep.family].model_id, "--model_args", ",".join(model_args)]
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
    closest known names (:func:`ipcv.eval.checks.task_problem`)."""
    problem = task_problem(tasks, include_path)
    if problem is not None:
        raise SystemExit(problem)


def not_built(setting: Setting, family: str | None = None) -> str | None:
    """Why the library cannot run ``setting`` yet, or None: a settings switch that is refused whatever
    the model, or (given the sweep's ``family``) a ViT-side baseline's ``output="reduced"`` on a family
    that does not have it (:attr:`ipcv.models.base.Adapter.reduced_output`)."""
    reduced_families = tuple(name for name, a in registry.families().items() if a.reduced_output)
    for text, side in ((setting.vision, "vision"), (setting.language, "language")):
        settings = parse_method(text, side)
        reduces = side == "vision" and settings is not None and settings.reduces_output
        if family is not None and reduces and not registry.family(family).reduced_output:
            return (
                f"output='reduced' is built for the mRoPE families {reduced_families} only, not for {family!r} "
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


@dataclass
class Step:
    """One setting of a planned sweep: its cells to run, those already in the store, why it is refused."""

    setting: Setting
    todo: list[str]
    held: list[str]
    refused: str | None
    run_dir: Path


@dataclass
class Plan:
    """A checked sweep (:func:`plan`): where its model loads from and what each setting will do."""

    sweep: Sweep
    model: Model
    steps: list[Step]
    store_rows: int

    @property
    def cells(self) -> int:
        return len(self.sweep.settings) * len(self.sweep.tasks)

    def count(self, what: str) -> int:
        """Cells to run ("todo"), already in the store ("held") or refused ("refused")."""
        if what not in ("todo", "held", "refused"):
            raise ValueError(f"what={what!r} is not allowed: use 'todo', 'held' or 'refused'")
        if what == "held":
            return sum(len(s.held) for s in self.steps)
        return sum(len(s.todo) for s in self.steps if (s.refused is None) == (what == "todo"))

    def summary(self, path: Path) -> str:
        sweep = self.sweep
        return (
            f"[{sweep.name}] {self.cells} cells ({len(sweep.settings)} settings x {len(sweep.tasks)} tasks): "
            f"{self.count('todo')} to run, {self.count('held')} already in the store (skipped), "
            f"{self.count('refused')} refused (not built); the store {path} holds {self.store_rows} rows"
        )


def _refused(sweep: Sweep, setting: Setting, reason: str) -> str:
    """The line a refused setting gets, in a real run and a dry run alike."""
    return f"[{sweep.name}] {setting.name}: not run: {reason}"


def _cannot_load(model: str, message: str) -> str:
    return (
        f"--model {model} cannot load:\n"
        + "\n".join(f"  {line}" for line in message.splitlines())
        + f"\n  fix: {MODEL_FIX}"
    )


def plan(sweep: Sweep, args, dry_run: bool = False) -> Plan:
    """Check the whole of ``sweep`` before any cell runs and say what each setting will do; SystemExit
    listing the problems found otherwise: first the model and its family, the include path and the store
    (all of them, in well under a second past the imports), then, if those pass, the tasks. A real run
    and a dry run go through this same function."""
    problems = []
    model = None
    try:
        model = check_model(sweep.model, sweep.family)
    except ModelCannotLoad as e:
        problems.append(_cannot_load(sweep.model, str(e)))
    except ValueError as e:
        problems.append(str(e))
    if args.include_path and not Path(args.include_path).is_dir():
        problems.append(f"--include-path {args.include_path}: no such directory (it holds extra task YAMLs)")
    rows = []
    try:
        rows = store.load(args.store)
    except (OSError, ValueError) as e:
        problems.append(f"--store: {e}")
    if problems:  # lmms-eval's task index takes seconds to read: a model that cannot load stops before it
        problems.append("(--tasks are checked against lmms-eval's task index once these are fixed)")
    else:
        problem = task_problem(sweep.tasks, args.include_path)
        if problem is not None:
            problems.append(problem)
    if problems:
        cells = len(sweep.settings) * len(sweep.tasks)
        head = (
            f"ipcv.eval {sweep.name} --dry-run: a real run would stop before its first cell (none of {cells} cells):"
            if dry_run
            else f"ipcv.eval {sweep.name}: stopped before the first cell (none of {cells} cells ran):"
        )
        raise SystemExit("\n".join([head, *problems]))
    done = {store.row_key(r) for r in rows}
    steps = []
    for setting in sweep.settings:
        held = [t for t in sweep.tasks if (sweep.model, setting.vision, setting.language, t, args.limit) in done]
        todo = [t for t in sweep.tasks if t not in held]
        reason = not_built(setting, sweep.family) if todo else None
        steps.append(Step(setting, todo, held, reason, _run_dir(sweep, setting, args)))
    return Plan(sweep, model, steps, len(rows))


def dry_run(plan: Plan, args) -> int:
    """Print what a real run of ``plan`` would do: every cell to run with its lmms-eval command, the
    refused settings (as a real run names them), the cells the store already holds, their counts.
    Returns the exit status the real run would end with if every cell ran (1 with refused settings)."""
    sweep = plan.sweep
    print(f"[{sweep.name}] {sweep.description}")
    print(f"[{sweep.name}] model: {plan.model.describe()}; --family {sweep.family}: lmms-eval --model "
          f"{FAMILIES[sweep.family].model_id}")  # fmt: skip
    env = "HF_HUB_OFFLINE=1 " if plan.model.offline else ""
    for step in plan.steps:
        name = f"[{sweep.name}] {step.setting.name}"
        held = f"; in the store (skipped): {', '.join(step.held)}" if step.held else ""
        if step.refused is not None:
            print(_refused(sweep, step.setting, step.refused))
        elif not step.todo:
            print(f"{name}: every cell in the store (skipped): {', '.join(step.held)}")
        else:
            print(f"{name}: run {len(step.todo)} cells: {', '.join(step.todo)}{held}")
            print(f"  {env}{shlex.join(_command(sweep, step.setting, step.todo, step.run_dir, args))}")
    print(plan.summary(args.store))
    refused = sum(1 for s in plan.steps if s.refused is not None)
    if refused:
        print(f"{refused} setting(s) cannot run yet (see above): a real run ends with exit status 1")
    return 1 if refused else 0


def run(plan: Plan, args) -> int:
    """Run every missing cell of ``plan``; returns the number of settings that failed or cannot run.
    Stops the sweep (SystemExit) at the first setting whose lmms-eval process could not load the model."""
    from tqdm.auto import tqdm

    sweep = plan.sweep
    failed = ran = 0
    print(plan.summary(args.store), flush=True)
    with tqdm(total=plan.cells, desc=f"{sweep.name} cells", unit="cell") as bar:
        bar.update(plan.count("held"))
        for step in plan.steps:
            setting, tasks, run_dir = step.setting, step.todo, step.run_dir
            if not tasks:
                continue
            bar.set_postfix_str(setting.name)
            if step.refused is not None:
                failed += 1
                tqdm.write(_refused(sweep, setting, step.refused))
                bar.update(len(tasks))
                continue
            shutil.rmtree(run_dir, ignore_errors=True)  # what a killed run left behind
            run_dir.mkdir(parents=True)
            cmd = _command(sweep, setting, tasks, run_dir, args)
            with open(run_dir / "lmms_eval.log", "w") as log:
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=plan.model.env())
            message = load_error(run_dir)
            if message is not None:
                held = plan.count("held")
                raise SystemExit(
                    f"[{sweep.name}] {setting.name}: lmms-eval could not load the model (its log: "
                    f"{run_dir / 'lmms_eval.log'})\n{_cannot_load(sweep.model, message)}\n"
                    f"the sweep stops at this first cell whose model cannot load: {ran} of {plan.cells} cells ran"
                    + (f", {held} were already in the store" if held else "")
                )
            try:
                added = store.append(args.store, _rows(sweep, setting, tasks, run_dir, args))
                ran += len(tasks)
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
    p = argparse.ArgumentParser(
        prog="python -m ipcv.eval",
        description=__doc__.split("\n")[0].replace("``", ""),  # the docstring's reST quotes are not for a terminal
        epilog="Before the first cell the whole sweep is checked: the tasks are lmms-eval's, --model can load "
        "(a local directory holding config.json, weights and processor files, or a hub id the hub answers "
        "for or the local cache holds) and its config.json's model_type is --family's, the store is readable. "
        "A model that cannot load stops the sweep at once, with the loader's message and the fix.",
    )
    p.add_argument("sweep", help=f"one of: {', '.join(names)}")
    p.add_argument("--model", help="hub id or local directory (default: the model the paper used for the sweep)")
    p.add_argument(
        "--family",
        help=f"model family: {', '.join(f'{f} (model_type {h.model_type})' for f, h in FAMILIES.items())}; "
        "must match --model's config.json (default: the sweep's; custom: qwen2_vl)",
    )
    p.add_argument("--tasks", help="comma-separated lmms-eval tasks (a named sweep: a subset of its tasks)")
    p.add_argument("--setting", action="append", help="custom only: NAME=VISION,LANGUAGE (repeatable)")
    p.add_argument("--protocol", help="named sweeps: paper (what the authors ran, the default) or official")
    p.add_argument("--limit", type=int, help="lmms-eval --limit: first N documents per task (smoke runs)")
    p.add_argument("--model-args", help="extra lmms-eval model args, e.g. use_flash_attention_2=true or device=cpu")
    p.add_argument("--include-path", help="lmms-eval --include_path: a directory of extra task YAMLs")
    p.add_argument("--processes", type=int, default=1, help="data-parallel processes (accelerate launch), one per GPU")
    p.add_argument("--batch-size", type=int, default=1, help="lmms-eval batch size (the paper: 1)")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help=f"results store (default {DEFAULT_STORE})")
    p.add_argument("--raw-dir", type=Path, default=DEFAULT_RAW, help=f"lmms-eval outputs (default {DEFAULT_RAW})")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check a real run does, then print each cell (setting x task) that would run with its "
        "lmms-eval command, the settings a real run refuses, the cell count and how many cells the store "
        "already holds (skipped); run nothing. Exit status 1 where the real run would fail or refuse settings",
    )
    args = p.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ:
        p.error("do not start ipcv.eval under accelerate/torchrun: it launches lmms-eval itself; use --processes N")
    if args.sweep not in names:
        p.error(f"unknown sweep {args.sweep!r}; allowed: {', '.join(names)}")
    if args.processes < 1 or args.batch_size < 1:
        p.error("--processes and --batch-size must be >= 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.sweep == "list":
        ignored = [
            f"--{a.dest.replace('_', '-')}"
            for a in p._actions
            if a.dest not in ("help", "sweep", "protocol") and getattr(args, a.dest) != a.default
        ]
        if ignored:
            p.error(f"list takes only --protocol; {', '.join(ignored)} would be ignored")
    if args.setting and args.sweep != "custom":
        p.error(
            f"--setting is for custom only; {args.sweep}'s settings are the paper's (see: python -m ipcv.eval list)"
        )
    _check_model_args(args.model_args)
    try:
        if args.sweep == "list":
            _list(args.protocol or "paper")
            return 0
        if args.sweep == "custom":
            sweep = _custom(args)
        else:
            args.protocol = args.protocol or "paper"
            sweep = sweeps(args.protocol)[args.sweep]
    except ValueError as e:
        p.error(str(e))
    if sweep.name == "custom" and not args.model:
        p.error("custom: give --model (hub id or local directory)")
    sweep = _select(sweep, args)
    checked = plan(sweep, args, dry_run=args.dry_run)
    if args.dry_run:
        return dry_run(checked, args)
    failed = run(checked, args)
    if failed:
        print(f"{failed} setting(s) failed or cannot run yet (see above); their cells are not in the store")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

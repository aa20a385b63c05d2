"""The paper's experiments as named sweeps: (vision, language) settings x lmms-eval task names.

Benchmarks map to lmms-eval 0.7.x task names (labelled splits where the paper's split is
submission-only); :data:`TASK_NOTES` says where lmms-eval's set differs from the paper's.
Settings come from :func:`ipcv.presets.paper_settings` (protocol ``"paper"``: what the authors ran;
``"official"``: each method's official definition at the row's ratios).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import presets
from ..method_strings import format_method, parse_method

SWEEPS: tuple[str, ...] = (
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "table6",
    "fig5",
    "qwen3vl8b",
    "llava_onevision_7b",
    "modern",
)

# paper column -> lmms-eval task
IMAGE_TASKS: dict[str, str] = {
    "GQA": "gqa",
    "MMB": "mmbench_en_dev",
    "MMB-CN": "mmbench_cn_dev",
    "MME": "mme",
    "POPE": "pope",
    "SEED": "seedbench",
    "VQA-text": "textvqa_val",
    "VizWiz": "vizwiz_vqa_val",
    "OCRBench": "ocrbench",
}
VIDEO_TASKS: dict[str, str] = {
    "MVBench": "mvbench",
    "EgoSchema": "egoschema_subset",
    "MLVU": "mlvu_dev",
    "VideoMME": "videomme",
}
# lmms-eval task -> (metric keys summed, factor to the paper's unit). A factor of 100 turns a fraction into
# the paper's percent; MME is the raw perception + cognition score, as in the paper. Avg. Acc. is relative to
# vanilla, so these factors only change how a table reads, never an average.
TASK_METRICS: dict[str, tuple[tuple[str, ...], float]] = {
    "gqa": (("exact_match",), 100.0),
    "mmbench_en_dev": (("gpt_eval_score",), 1.0),
    "mmbench_cn_dev": (("gpt_eval_score",), 1.0),
    "mme": (("mme_perception_score", "mme_cognition_score"), 1.0),
    "pope": (("pope_accuracy",), 100.0),
    "seedbench": (("seed_image",), 100.0),
    "textvqa_val": (("exact_match",), 100.0),
    "vizwiz_vqa_val": (("exact_match",), 100.0),
    "ocrbench": (("ocrbench_accuracy",), 100.0),
    "mvbench": (("mvbench_accuracy",), 1.0),
    "egoschema_subset": (("score",), 1.0),
    "mlvu_dev": (("mlvu_percetion_score",), 1.0),
    "videomme": (("videomme_perception_score",), 1.0),
}
TASK_NOTES: dict[str, str] = {
    "pope": "POPE: the paper does not say which POPE metric it reports; accuracy is used (F1 is in the store too)",
    "videomme": "VideoMME overall; lmms-eval logs the short / medium / long split but does not report it as metrics, "
    "so Table 2's Avg. Acc. (which averages all seven columns) is computed over the columns present",
    "mmbench_en_dev": "MMBench-EN dev (the test split has no public labels); lmms-eval falls back to a GPT judge "
    "(OPENAI_API_KEY) when its heuristics cannot extract the option letter",
    "mmbench_cn_dev": "MMBench-CN dev, as mmbench_en_dev",
    "textvqa_val": "TextVQA validation (the test split is submission-only)",
    "vizwiz_vqa_val": "VizWiz-VQA validation (the test split is submission-only)",
    "egoschema_subset": "EgoSchema's 500-question labelled subset; the full set (task egoschema) is submission-only",
    "mlvu_dev": "MLVU dev; lmms-eval has no task named mlvu",
    "seedbench": "SEED-Bench; the paper's column is the image accuracy (metric seed_image)",
}

# The model each table used (hub ids; any local directory with the same architecture works)
QWEN2_VL_7B = "Qwen/Qwen2-VL-7B-Instruct"
INTERNVL3_38B = "OpenGVLab/InternVL3-38B-hf"
# ipcv's own sweeps on models the paper did not run (named for the model, never as a paper table)
QWEN3_VL_8B = "Qwen/Qwen3-VL-8B-Instruct"
LLAVA_ONEVISION_7B = "llava-hf/llava-onevision-qwen2-7b-ov-hf"


@dataclass(frozen=True)
class Setting:
    """One (vision, language) setting of a sweep. ``name`` labels it (the paper's row when it is one)."""

    name: str
    vision: str
    language: str
    table: str | None = None
    setting: str | None = None
    method: str | None = None


@dataclass(frozen=True)
class Sweep:
    name: str
    family: str
    model: str
    tasks: tuple[str, ...]
    settings: tuple[Setting, ...]
    description: str


def _table(table: str, tasks, protocol: str, family: str, model: str, what: str) -> Sweep:

    settings = []
    for setting, method in presets.paper_rows(table):
        vision, language = presets.paper_settings(table, setting, method, protocol)
        settings.append(
            Setting(f"{setting}/{method}", format_method(vision), format_method(language), table, setting, method)
        )
    return Sweep(table, family, model, tuple(tasks), tuple(settings), what)


def _fig5(protocol: str) -> Sweep:
    """Figure 5: IPCV's l_p, AS depth and k on MMBench-EN at ViT 35 % / LLM 35 % (LLM side as Table 6's
    IPCV row), ToMe as the reference. The figure's grid is not given in the text: this one brackets the
    defaults (l_p 3, AS 7, k 10)."""

    base_v, base_l = presets.paper_settings("table6", "vit35_llm35", "IPCV", protocol)
    base = format_method(base_v)
    variants = [("IPCV", base)]
    variants += [(f"IPCV l_p={p}", f"{base}:prune_layer={p}") for p in (1, 2, 4, 5, 6)]
    variants += [(f"IPCV AS={a}", f"{base}:stabilize_layers={a}") for a in (0, 1, 3, 5, 9)]
    variants += [(f"IPCV k={k}", f"{base}:neighbors={k}") for k in (1, 3, 5, 20, 50)]
    tome_v, tome_l = presets.paper_settings("table1", "vit35_llm35", "ToMe", protocol)
    settings = [Setting("vanilla", "none", "none")]
    settings += [Setting(name, _canonical(v), format_method(base_l)) for name, v in variants]
    settings.append(Setting("ToMe", format_method(tome_v), format_method(tome_l)))
    return Sweep("fig5", "qwen2_vl", QWEN2_VL_7B, ("mmbench_en_dev",), tuple(settings), "Figure 5: sensitivity")


def _modern() -> Sweep:
    """This project's "2026 comparison" (not a table of the paper): Table 1's image tasks on Qwen2-VL-7B,
    every method alone at 35 / 20 / 10 % and IPCV paired with each pre-LLM method
    (:func:`ipcv.presets.modern_settings`, library defaults; the same in both protocols)."""
    settings = tuple(
        Setting(name, format_method(v), format_method(lang)) for name, v, lang in presets.modern_settings()
    )
    what = "2026 comparison (this project's sweep, not the paper's): every method at 35/20/10 %, IPCV + each pre-LLM"
    return Sweep("modern", "qwen2_vl", QWEN2_VL_7B, tuple(IMAGE_TASKS.values()), settings, what)


def _on_model(table: str, tasks, protocol: str, name: str, family: str, model: str, what: str) -> Sweep:
    """``table``'s rows (each method's settings in ``protocol``) on a model the paper did not run: the ViT-side
    baselines with ``output="full"`` (their reduced output is built for the mRoPE families only); the settings
    carry no paper table, so nothing is read as the paper's."""
    settings = []
    for setting, method in presets.paper_rows(table):
        vision, language = presets.paper_settings(table, setting, method, protocol)
        if vision is not None and vision.reduces_output:
            vision = replace(vision, output="full")
        settings.append(Setting(f"{setting}/{method}", format_method(vision), format_method(language)))
    return Sweep(name, family, model, tuple(tasks), tuple(settings), what)


def _canonical(text: str) -> str:

    return format_method(parse_method(text, "vision"))


def sweeps(protocol: str = "paper") -> dict[str, Sweep]:
    """Every named sweep in ``protocol`` ("paper" or "official")."""

    if protocol not in presets.PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not allowed: use one of {presets.PROTOCOLS}")
    image = tuple(IMAGE_TASKS.values())
    q = ("qwen2_vl", QWEN2_VL_7B)
    return {
        "table1": _table("table1", image, protocol, *q, "Table 1: image benchmarks, Qwen2-VL-7B"),
        "table2": _table("table2", VIDEO_TASKS.values(), protocol, *q, "Table 2: video benchmarks, Qwen2-VL-7B"),
        "table3": _table(
            "table3",
            (t for c, t in IMAGE_TASKS.items() if c != "SEED"),
            protocol,
            "internvl",
            INTERNVL3_38B,
            "Table 3: image benchmarks, InternVL3-38B",
        ),  # fmt: skip
        "table4": _table("table4", ("mmbench_en_dev",), protocol, *q, "Table 4: efficiency on MMBench-EN"),
        "table5": _table("table5", image, protocol, *q, "Table 5: IPCV with each LLM-side pruner"),
        "table6": _table("table6", image, protocol, *q, "Table 6: ablation"),
        "fig5": _fig5(protocol),
        "qwen3vl8b": replace(
            _table("table1", image, protocol, "qwen3_vl", QWEN3_VL_8B, ""),
            name="qwen3vl8b",
            description="Qwen3-VL-8B on Table 1's image tasks and settings (ipcv's sweep: the paper has no Qwen3-VL "
            "table, so nothing here is compared with a paper number)",
        ),
        "llava_onevision_7b": _on_model(
            "table1",
            image,
            protocol,
            "llava_onevision_7b",
            "llava_onevision",
            LLAVA_ONEVISION_7B,
            "Table 1's settings and tasks on LLaVA-OneVision-7B (not in the paper; ViT-side baselines with full "
            "output)",
        ),  # fmt: skip
        "modern": _modern(),
    }

"""Two tiny local lmms-eval tasks on real photographs bundled with scikit-image (no dataset hub):

- ``ipcv_tiny_yesno``: POPE's format (question, yes/no answer, image); scored by lmms-eval's own POPE
  functions (``lmms_eval.tasks.pope.utils``);
- ``ipcv_tiny_mc``: MMBench's format (question, options A-D, answer letter, image), scored by exact
  option letter (MMBench's own scorer needs a GPT judge).

A handful of questions each: a pipeline check for ``python -m ipcv.eval``, never an accuracy.
"""

from __future__ import annotations

import io
from pathlib import Path

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "horse", "camera")

YESNO = [
    ("astronaut", "Is there a person in the image?", "yes"),
    ("chelsea", "Is there a cat in the image?", "yes"),
    ("coffee", "Is there a dog in the image?", "no"),
    ("rocket", "Is there a rocket in the image?", "yes"),
    ("horse", "Is there a car in the image?", "no"),
]
MC = [
    ("chelsea", "Which animal is shown?", ("a cat", "a horse", "a fish", "a bird"), "A"),
    ("coffee", "What is in the cup?", ("tea", "water", "coffee", "milk"), "C"),
    ("rocket", "What is shown?", ("a boat", "a rocket", "a tree", "a cup"), "B"),
    ("astronaut", "Who is shown?", ("a child", "a cook", "a farmer", "an astronaut"), "D"),
]

YESNO_YAML = """\
task: ipcv_tiny_yesno
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: yesno.parquet
test_split: test
output_type: generate_until
doc_to_visual: !function lmms_eval.tasks.pope.utils.pope_doc_to_visual
doc_to_text: !function lmms_eval.tasks.pope.utils.pope_doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function lmms_eval.tasks.pope.utils.pope_process_results
metric_list:
  - metric: pope_accuracy
    aggregation: !function lmms_eval.tasks.pope.utils.pope_aggregate_accuracy
    higher_is_better: true
  - metric: pope_f1_score
    aggregation: !function lmms_eval.tasks.pope.utils.pope_aggregate_f1_score
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
"""

MC_YAML = """\
task: ipcv_tiny_mc
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: mc.parquet
test_split: test
output_type: generate_until
doc_to_visual: !function tiny_mc_utils.doc_to_visual
doc_to_text: !function tiny_mc_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function tiny_mc_utils.process_results
metric_list:
  - metric: mc_accuracy
    aggregation: mean
    higher_is_better: true
"""

MC_UTILS = '''\
"""MMBench-style prompt and exact-letter scoring for the tiny multiple-choice task."""


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\\n".join(f"{k}. {doc[k]}" for k in "ABCD")
    return f"{doc['question']}\\n{options}\\nAnswer with the option's letter from the given choices directly."


def process_results(doc, results):
    pred = results[0].strip()
    return {"mc_accuracy": float(pred[:1].upper() == doc["answer"])}
'''


def _png(name: str) -> bytes:
    from PIL import Image
    from skimage import data

    array = getattr(data, name)()
    image = Image.fromarray(array).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_tiny_tasks(path: str | Path) -> Path:
    """Write both tasks (YAML + parquet, and the MC scorer) into ``path``; returns ``path`` for
    ``lmms-eval --include_path``."""
    from datasets import Dataset, Features, Image, Value

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    photos = {name: {"bytes": _png(name), "path": None} for name in PHOTOS}
    yesno = Features(
        {"question_id": Value("string"), "question": Value("string"), "answer": Value("string"),
         "category": Value("string"), "image": Image()}
    )  # fmt: skip
    Dataset.from_list(
        [{"question_id": str(i), "question": q, "answer": a, "category": "tiny", "image": photos[p]}
         for i, (p, q, a) in enumerate(YESNO)],
        features=yesno,
    ).to_parquet(path / "yesno.parquet")  # fmt: skip
    mc = Features(
        {"index": Value("int64"), "question": Value("string"), "A": Value("string"), "B": Value("string"),
         "C": Value("string"), "D": Value("string"), "answer": Value("string"), "image": Image()}
    )  # fmt: skip
    Dataset.from_list(
        [{"index": i, "question": q, **dict(zip("ABCD", opts)), "answer": a, "image": photos[p]}
         for i, (p, q, opts, a) in enumerate(MC)],
        features=mc,
    ).to_parquet(path / "mc.parquet")  # fmt: skip
    (path / "ipcv_tiny_yesno.yaml").write_text(YESNO_YAML)
    (path / "ipcv_tiny_mc.yaml").write_text(MC_YAML)
    (path / "tiny_mc_utils.py").write_text(MC_UTILS)
    return path

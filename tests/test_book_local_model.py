"""The notebooks re-run on other weights tell the truth about them: executed end to end with ``-p model <dir>``
on a tiny random Qwen2-VL saved locally with its processor (no hub), the way ``python -m ipcv.book build -p model
<dir>`` runs them. The weights are checked, not assumed: the closing paragraphs and the status page's claims name
that model, call its weights random (untrained), carry none of the default build's (trained DINOv2) figures, and
draw no quality verdict from it.
"""

from __future__ import annotations

import re

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from ipcv.book import build as book  # noqa: E402


def save_local_qwen2_vl(path):
    """The lead's tiny Qwen2-VL checkpoint (model + processor with a trained tokenizer) when its video
    processor can be built (torchvision); else the model and the real Qwen2-VL image processor only,
    which is all the notebooks load. Vision depth 12: the paper's default AS depth needs l_p + 7 blocks."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    try:
        from tiny_qwen2_vl import save_tiny_qwen2_vl

        return save_tiny_qwen2_vl(path, vision_depth=12)
    except ImportError:  # no torchvision: Qwen2VLVideoProcessor cannot be built
        pass
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1,
                         pad_token_id=0, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                          "rope_theta": 10000.0}),
        vision_config=dict(depth=12, embed_dim=64, num_heads=4, hidden_size=64, mlp_ratio=2),
        image_token_id=290, video_token_id=291, vision_start_token_id=292, vision_end_token_id=293,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(path)
    Qwen2VLImageProcessor(min_pixels=8 * 8 * 14 * 14, max_pixels=16 * 16 * 14 * 14).save_pretrained(path)
    return path


def _outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            parts.append(str(data.get("text/markdown") or data.get("text/plain") or out.get("text") or ""))
    return "\n".join(parts)


def test_what_we_saw_has_no_number_of_its_own():
    """The closing sections' Markdown states no number: numbers come from the generated paragraph."""
    for path in book.notebooks():
        nb = nbformat.read(path, as_version=4)
        start = next(i for i, c in enumerate(nb.cells) if c.source.startswith("## What we saw"))
        for cell in nb.cells[start:]:
            if cell.cell_type == "markdown":
                assert not re.search(r"\d", cell.source), f"{path.name}: a number in prose:\n{cell.source}"


@pytest.mark.slow
@pytest.mark.subprocess
def test_notebook_on_a_local_qwen2_vl_names_it_and_not_dinov2(tmp_path):
    from ipcv.book import status

    model = save_local_qwen2_vl(tmp_path / "tiny-qwen2-vl")
    src = book.notebooks(["01"])[0]
    results = tmp_path / "results"
    params = dict(model=str(model), images=["astronaut"], image_size=56, keep_ratios=[0.5, 0.35])
    book.execute(src, tmp_path / src.name, params, env={book.RESULTS_ENV: str(results)})

    nb = nbformat.read(tmp_path / src.name, as_version=4)
    text = _outputs(nb)
    # two closing paragraphs: the pruning section's and the selection-rule ablation's; each names the run
    paragraphs = [
        str(o["data"]["text/markdown"])
        for c in nb.cells
        for o in c.get("outputs", [])
        if "text/markdown" in o.get("data", {}) and "In this run" in str(o["data"]["text/markdown"])
    ]
    assert len(paragraphs) == 2, paragraphs
    for paragraph in paragraphs:
        assert f"loaded from the local directory {model}, vision tower only, random (untrained): all " in paragraph
        assert "1 photograph at 56 px" in paragraph, paragraph
    saw = "\n".join(paragraphs)
    assert "DINOv2" not in text
    labels = [line for line in text.splitlines() if line.startswith("Weights:")]
    assert labels and all("released" not in line and str(model) in line for line in labels), labels
    assert "1 photograph at 56 px" in saw and "no saliency head" in saw
    assert "rocket" not in saw  # remarks on the default photographs appear on the default build only
    assert re.search(r"keep the same \d+ of \d+ patches at keep 35 %", saw), saw

    claims = status.claims(results).set_index("paper")["reproduced in this build?"]
    assert claims["§3.1, Figure 6, App. F"] == "Not measured: these weights have no saliency head"
    assert claims["§3.2, Figure 2"] == status.NOT_RUN  # notebook 02 did not run in this build
    run = status.build_run(results)
    assert run["weights"].tolist() == [
        f"loaded from the local directory {model}, vision tower only, random (untrained): all 25 norm / LayerScale "
        "layers still at their initial scale and zero shift"
    ]
    assert run["trained"].tolist() == [False]


# claims that are not about quality: by construction, cost, or needing what no build has
NOT_QUALITY = ("§3.4–3.5", "§3.5, Table 5", "§4, Tables 1–3, Figure 4", "§5.1, Table 4", "§1, Figure 1")


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_notebook_that_takes_a_model_runs_on_a_local_random_qwen2_vl_and_claims_nothing(tmp_path):
    """Item 4 of the newcomer issue: every notebook with a ``model`` parameter, executed as the book build runs it
    (book.run_all, the build's own loop) on three photographs, so that the verdicts have images to test on."""
    from ipcv.book import status

    model = save_local_qwen2_vl(tmp_path / "tiny-qwen2-vl")
    paths = [p for p in book.notebooks() if "model" in book.parameters_of(p)]
    assert [p.name[:2] for p in paths] == ["01", "02", "03", "04", "05", "06", "08", "09"]
    params = dict(book.SMOKE, model=str(model), images=["astronaut", "coffee", "chelsea"], image_size=56,
                  keep_ratio=0.5, prune_layers=[2, 3], neighbor_counts=[2, 10])  # fmt: skip
    results = tmp_path / "results"
    book.run_all(paths, tmp_path / "out", params, env={book.RESULTS_ENV: str(results)})

    for path in paths[:6]:  # the fidelity notebooks: each closing paragraph
        nb = nbformat.read(tmp_path / "out" / path.name, as_version=4)
        saw = [
            str(o["data"]["text/markdown"])
            for c in nb.cells
            for o in c.get("outputs", [])
            if "In this run" in str(o.get("data", {}).get("text/markdown", ""))
        ]
        # 01 closes two sections (the pruning rule, and eq. 1 against random / diversity), the others one
        assert len(saw) == (2 if path.name[:2] == "01" else 1), path.name
        text = "\n".join(saw)
        assert "random (untrained)" in text and 'every verdict below reads "not a result"' in text, path.name
        assert "**Yes**" not in text and "**No**" not in text and "**Inconclusive**" not in text, text
        assert "reproduced" not in text and not re.search(r"\bnan\b", text, re.IGNORECASE), text
        assert "DINOv2" not in text and "rocket" not in text, text
        if path.name[:2] != "01":  # 01 has no saliency head to judge here: its verdict is "not measured"
            assert "**Not a result: random weights**" in text, (path.name, text)

    claims = status.claims(results).set_index("paper")["reproduced in this build?"]
    for paper, said in claims.items():
        if paper.startswith(NOT_QUALITY):
            continue
        assert "Not a result: random weights" in said or said.startswith("Not measured"), (paper, said)
        assert not re.search(r"\*\*(Yes|No|Inconclusive|Holds|Partly)\b", said), (paper, said)
    assert status.trained_build(results) is False

"""generate() under every LLM-side method, and under every vision-side x LLM-side pair, in each multimodal
family (``families.FAMILIES``: Qwen2-VL, Qwen2.5-VL, InternVL, LLaVA), on their tiny random models.

Beyond the output length (which ``min_new_tokens == max_new_tokens`` already fixes), each run checks what
was kept, from ``ipcv.stats``: the prefill's decoder record keeps ``settings.counts(n)`` tokens of every
visual span of ``n`` tokens at every stage, and a compressed vision call keeps ``keep_count`` of every
segment's patches (protected CLS tokens kept on top).
"""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES, check_kept, family_languages, family_visions

import ipcv


def assert_kept(record, settings, spans):
    """``record.kept`` against ``settings.counts(n)[stage]`` of each span of ``n`` tokens, every stage."""
    stages = range(len(settings.stage_layers()))
    check_kept(record.kept, [[[settings.counts(n)[s] for n in sample] for sample in spans] for s in stages])


CASES = [pytest.param(f, case, id=f"{f}-{case}") for f in FAMILIES for case in f.cases]


@pytest.mark.parametrize("name", family_languages(0.35))
@pytest.mark.parametrize("family, case", CASES, indirect=["family"])
def test_generate_greedy_and_sampled(family, family_model, case, name):
    model, c, settings, n = family_model, family.cases[case], family_languages(0.35)[name], family.new_tokens
    kw = c.kw
    with torch.no_grad(), ipcv.compressed(model, language=settings):
        with ipcv.stats(model) as greedy_stats:
            greedy = model.generate(**kw, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.manual_seed(0)
        with ipcv.stats(model) as sampled_stats:
            sampled = model.generate(**kw, max_new_tokens=n, min_new_tokens=n, do_sample=True, top_k=0)
    assert greedy.shape == sampled.shape == (kw["input_ids"].shape[0], kw["input_ids"].shape[1] + n)
    for st in (greedy_stats, sampled_stats):
        assert [(v.seg_lengths, v.settings) for v in st.vision] == [(seg, None) for seg in c.segments]
        assert len(st.decoder) == n and all(not r.kept for r in st.decoder[1:])  # one prefill, then cached steps
        assert_kept(st.decoder[0], settings, c.spans)


@pytest.mark.parametrize("vision", family_visions(0.35))
@pytest.mark.parametrize("name", family_languages(0.35))
def test_vision_and_language_pairs_generate(family, family_model, vision, name):
    model, c, n = family_model, family.cases["padded"], family.new_tokens
    v, lang = family_visions(0.35)[vision], family_languages(0.35)[name]
    with torch.no_grad():
        vanilla = model(**c.kw).logits
        with ipcv.compressed(model, vision=v, language=lang):
            assert ipcv.settings(model) == v and ipcv.settings(model, "language") == lang
            with ipcv.stats(model) as st:
                out = model.generate(**c.kw, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            logits = model(**c.kw).logits
    assert out.shape[1] == c.kw["input_ids"].shape[1] + n
    assert torch.isfinite(logits).all() and not torch.equal(logits, vanilla)
    # the tower's output is full length: the decoder sees every span whole and prunes as without the tower
    assert_kept(st.decoder[0], lang, c.spans)
    p = family.prefix
    assert [call.seg_lengths for call in st.calls] == c.segments
    for call in st.calls:
        assert call.keep_counts == [ipcv.keep_count(s - p, 0.35) + p for s in call.seg_lengths]

"""`run_demo(text=True)`: the packaged demo spec plus the three text methods with the packaged default text model,
through the spec's overrides (nothing else changes); the default demo is left as it is."""
from __future__ import annotations

import pytest

from omop_behrt.study import run as study
from omop_behrt.evaluation.comparison import TEXT_METHODS
from omop_behrt.study.demo import DEMO_TEXT_MODEL, run_demo


@pytest.fixture
def ran(monkeypatch):
    """What run_demo hands to run_study (the spec and its options), without running the study."""
    calls = []
    monkeypatch.setattr(study, "run_study", lambda spec, out, **kw: calls.append((spec, out, kw)))
    return calls


def test_text_adds_the_text_methods_with_the_packaged_model(ran, tmp_path):
    base = study.load_spec(study.DEMO_SPEC)
    assert run_demo(tmp_path, text=True, progress=False) == 0
    spec, out, kw = ran[0]
    assert spec.evaluation.methods == [*base.evaluation.methods, *TEXT_METHODS]
    assert spec.evaluation.text_model == DEMO_TEXT_MODEL == "all-MiniLM-L6-v2"
    assert out == tmp_path and kw["what"] == "demo" and kw["resume"] is True
    # everything else is the demo's own spec: same task, model, few-shot grid, bootstrap
    for part in ("target", "outcome", "time_at_risk", "split", "model"):
        assert spec.part(part) == base.part(part)
    e, b = spec.evaluation, base.evaluation
    assert (e.few_shot, e.bootstrap, e.epochs) == (b.few_shot, b.bootstrap, b.epochs)
    # with few_shot off too, both overrides hold
    run_demo(tmp_path, text=True, few_shot=False, progress=False)
    assert ran[1][0].evaluation.few_shot in ([], None) and ran[1][0].evaluation.methods[-3:] == list(TEXT_METHODS)


def test_the_default_demo_has_no_text_method(ran, tmp_path):
    run_demo(tmp_path, progress=False)
    spec = ran[0][0]
    assert spec.evaluation.methods == study.load_spec(study.DEMO_SPEC).evaluation.methods
    assert not set(spec.evaluation.methods) & set(TEXT_METHODS)

"""The text encoder beside the other methods in the comparison (text-lr, text-counts, text-behrt): same task, split
and bootstrap; exact reproducibility, the feature widths each was fitted on, and no text import unless asked."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the text encoder's extra (omop-behrt[text]) is not installed")

from test_text_encoder import _bert_dir  # after the importorskip: it needs transformers

TEXT = ["text-lr", "text-counts", "text-behrt"]


@pytest.fixture(scope="module")
def gi_bleed(eunomia_db, tmp_path_factory):
    """The GI-bleed task of the other evaluate tests (first NSAID -> GI bleed, 600 rows) and its CDM copy."""
    from cdm_fixtures import copy_with_nsaid_cohort

    from omop_behrt.tasks.labels import Task, plp_task
    cdm = copy_with_nsaid_cohort(eunomia_db, tmp_path_factory.mktemp("evaluate_text"))
    t = plp_task(cdm, 1, outcome_concepts=[192671], results_schema="results")
    return cdm, Task(t.labels.slice(0, 600), t.definition, t.attrition)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return _bert_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def prepared(gi_bleed, tiny_model, bert):
    from omop_behrt.evaluation import comparison
    cdm, task = gi_bleed
    return comparison.prepare(tiny_model, cdm, task, text_model=bert)


@pytest.fixture(scope="module")
def split(prepared):
    from omop_behrt.tasks.labels import split_persons
    return split_persons(prepared.task.labels["subject_id"].to_numpy(), seed=0)


def test_text_vectors_are_the_task_rows(prepared, bert):
    text = prepared.text
    assert text.vectors.shape == (600, 16) and text.vectors.dtype == np.float32 and np.isfinite(text.vectors).all()
    assert text.index["subject_id"].to_pylist() == prepared.task.labels["subject_id"].to_pylist()
    assert text.provenance["text_model"]["name"] == bert.name
    assert text.provenance["index_rule"] == "events strictly before the index date"
    assert text.has_history.sum() > 500                      # nearly every NSAID user has a history before it


def test_text_methods_run_reproducibly_on_the_same_split(prepared, split):
    from omop_behrt.evaluation import comparison
    from omop_behrt.evaluation.heads import LinearProbe
    kw = dict(methods=["counts-lr", "embeddings-lr", *TEXT], few_shot_fractions=(0.5, 1.0), n_boot=50, seed=3,
              progress=False)
    a = comparison.run(prepared, split, **kw)
    b = comparison.run(prepared, split, **kw)
    assert a["methods"] == b["methods"] and a["few_shot"] == b["few_shot"]
    assert a["test_predictions"] == b["test_predictions"]
    assert list(a["methods"]) == ["counts-lr", "embeddings-lr", *TEXT]
    for name in TEXT:
        m = a["methods"][name]
        lo, hi = m["auroc_ci"]
        assert 0 <= lo <= m["auroc"] <= hi <= 1 and m["auprc_ci"][0] <= m["auprc"] <= m["auprc_ci"][1]
        assert m["n"] == a["methods"]["counts-lr"]["n"]                # the same test rows
    # text-lr is the linear probe on the text vectors, nothing else
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    T, y = prepared.text.vectors, prepared.task.y
    by_hand = LinearProbe().fit(T[tr], y[tr]).predict_proba(T[te])[:, 1]
    assert np.array_equal(np.asarray(a["test_predictions"]["text-lr"]), by_hand)
    # the widths each method was fitted on: text ⊕ BEHRT, text ⊕ counts
    f = a["features"]
    assert f["text"] == 16 and f["embedding"] == prepared.model.config.hidden
    assert f["by_method"]["text-lr"] == 16
    assert f["by_method"]["text-behrt"] == 16 + prepared.model.config.hidden
    assert f["by_method"]["text-counts"] == 16 + f["counts"] == 16 + f["by_method"]["counts-lr"]
    # few-shot: text-lr has a curve, its 100% point is the main fit
    assert {r["method"] for r in a["few_shot"]} == {"counts-lr", "embeddings-lr", "text-lr"}
    full = next(r for r in a["few_shot"] if r["method"] == "text-lr" and r["fraction"] == 1.0)
    assert full["auroc"] == pytest.approx(a["methods"]["text-lr"]["auroc"])
    assert a["text"]["serializer_version"] and a["text"]["description_coverage"]["event_share"] > 0.9
    assert a["seconds"]["text"] > 0
    c = comparison.run(prepared, split, **{**kw, "seed": 4})          # another seed: other CIs
    assert c["methods"]["text-counts"]["auroc_ci"] != a["methods"]["text-counts"]["auroc_ci"]


def test_text_methods_without_text_vectors_say_what_to_do(prepared, split):
    from dataclasses import replace

    from omop_behrt.evaluation import comparison
    with pytest.raises(ValueError, match=r"text-behrt need the text vectors: prepare\(\.\.\., text_model="):
        comparison.run(replace(prepared, text=None), split, methods=["counts-lr", "text-behrt"],
                       few_shot_fractions=None, n_boot=10, progress=False)


def test_cli_text_methods_and_no_text_import_otherwise(gi_bleed, tiny_model, bert, tmp_path, capsys):
    from omop_behrt.cli.main import main
    cdm, task = gi_bleed
    task.save(tmp_path / "task")
    base = ["evaluate", "--model", str(tiny_model), "--source", str(cdm), "--task", str(tmp_path / "task"),
            "--no-few-shot", "--bootstrap", "20", "--jobs", "1"]
    assert main([*base, "--methods", "counts-lr,text-lr,text-counts", "--text-model", str(bert),
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert all(any(line.startswith(m + " ") for line in out.splitlines()) for m in ("text-lr", "text-counts"))
    import json
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["methods"]) == {"counts-lr", "text-lr", "text-counts"} and saved["text"]["text_model"]
    # a text model that is not there: one line naming it, before any extraction
    assert main([*base, "--methods", "text-lr", "--text-model", str(tmp_path / "no-model")]) != 0
    err = capsys.readouterr().err
    assert f"text model directory {tmp_path / 'no-model'} does not exist" in err and "Traceback" not in err
    # the same command without a text method, in a fresh process: nothing of the text path is imported
    code = textwrap.dedent(f"""
        import sys
        from omop_behrt.cli.main import main
        rc = main({[*base, "--methods", "counts-lr,embeddings-lr"]!r})
        text = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "sentence_transformers")
                      or m in ("omop_behrt.text.encoder", "omop_behrt.text.serialize"))
        print("TEXT-MODULES", text)
        sys.exit(rc or bool(text))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "TEXT-MODULES []" in r.stdout and "counts-lr" in r.stdout

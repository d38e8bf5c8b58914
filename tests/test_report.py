"""A tiny end-to-end run (CDM -> task -> every method -> report), no leakage into inputs, the report's sections:
what the study is (names, rate, versions), Table 1 (checked against pandas), warnings for degenerate results,
shareable output, and the page rendered by headless Chromium."""
from __future__ import annotations

import copy
import json
import re

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from omop_behrt import __version__
from omop_behrt.evaluation import comparison
from omop_behrt.evaluation.baselines import CountFeatures
from omop_behrt.cli.main import main
from omop_behrt.evaluation.metrics import shareable_results
from omop_behrt.behrt.model import Behrt
from omop_behrt.evaluation.report import (SECTIONS, attention_weights, chromium, result_warnings, screenshot,
                                          write_report)
from omop_behrt.shareable import check_shareable
from omop_behrt.tasks.labels import Task, plp_task, split_persons
from cdm_fixtures import copy_with_nsaid_cohort

@pytest.fixture(scope="module")
def cdm(eunomia_db, tmp_path_factory):
    return copy_with_nsaid_cohort(eunomia_db, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def small_task(cdm) -> Task:
    t = plp_task(cdm, 1, outcome_concepts=[192671], results_schema="results")
    return Task(t.labels.slice(0, 700), t.definition, t.attrition)


@pytest.fixture(scope="module")
def prepared(tiny_model, cdm, small_task):
    return comparison.prepare(tiny_model, cdm, small_task)


def test_inputs_stop_before_the_index_date(prepared, small_task):
    ix = dict(zip(small_task.labels["subject_id"].to_pylist(), small_task.labels["index_date"].to_numpy()))
    codes = prepared.codes
    t = codes["time"].to_numpy()
    idx = np.array([ix[s] for s in codes["subject_id"].to_pylist()])
    assert len(t) > 10_000 and (t[~np.isnat(t)] < idx[~np.isnat(t)]).all()      # censored in the extraction SQL
    assert (prepared.seqs.subject_id == small_task.labels["subject_id"].to_numpy()).all()
    # events planted on and after every index date change no count feature
    index = small_task.labels.select(["subject_id", "index_date"])
    later = pa.table({"subject_id": index["subject_id"], "time": index["index_date"],
                      "code": pa.array(["SNOMED/192671"] * index.num_rows)})
    planted = pa.concat_tables([codes, later.cast(codes.schema)])
    cf = CountFeatures().fit((codes, index))
    assert (cf.transform((codes, index)) != cf.transform((planted, index))).nnz == 0
    assert "all:SNOMED/192671" not in cf.fit((planted, index)).features_


def test_attention_weights_reproduce_the_fast_path(tiny_model, prepared):
    from omop_behrt.behrt.batches import collate
    model = Behrt.load(tiny_model)
    i = int(np.argmax(prepared.seqs.lengths))
    w = attention_weights(model, prepared.seqs, i, mean=False)
    assert np.allclose(w.sum(-1), 1, atol=1e-5)
    b = collate(prepared.seqs, np.array([i]), {})
    with torch.no_grad():
        x = model.embeddings(b["input_ids"], b["ages"], b["segments"], b["positions"], {})
        for block in model.blocks[:-1]:
            x = block(x, None)
        last = model.blocks[-1]
        B, T, H = x.shape
        q, k, v = last.attn.qkv(last.ln1(x)).view(B, T, 3, last.attn.heads, -1).permute(2, 0, 3, 1, 4)
        fast = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(torch.from_numpy(w)[None] @ v, fast, atol=1e-5)


@pytest.fixture(scope="module")
def split(small_task):
    return split_persons(small_task.labels["subject_id"].to_numpy(), seed=0)


#: the fast methods (no boosting, no fine-tuning: test_cli_task_and_evaluate fine-tunes); the names come from
#: comparison.METHODS, whatever they are called
FAST = [m for m in comparison.METHODS if "gbm" not in m.lower() and not m.lower().startswith("fine")]


@pytest.fixture(scope="module")
def results(prepared, split):
    return comparison.run(prepared, split, methods=FAST, few_shot_fractions=(0.25, 1.0),
                          few_shot_methods=FAST[:2], n_boot=30, progress=False)


@pytest.fixture(scope="module")
def report(results, prepared, tiny_model, cdm, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "r"
    return write_report(out, results, tiny_model, prep=prepared, cdm=cdm, target="first NSAID exposure (cohort 1)")


def test_end_to_end_comparison_and_report(results, report, split):
    assert set(results["methods"]) == set(FAST) and len(FAST) == 3
    for m in results["methods"].values():
        assert 0 <= m["auroc"] <= 1 and m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1]
    assert len(results["few_shot"]) == 4 and results["n"]["test"]["rows"] == int((split == "test").sum())
    page = report.read_text()
    for section in SECTIONS:
        assert f"<h2>{section}" in page
    # loss curve, ROC/PR, calibration, few-shot, t-SNE, attention
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 6 and "http" not in page.split("<body>")[1]
    assert page.count("How to read this") == len(SECTIONS)
    stored = json.loads((report.parent / "results.json").read_text())
    assert "test_predictions" not in stored and stored["characteristics"]["conditions"]


def test_report_says_what_the_study_is(report, cdm, prepared):
    page = report.read_text()
    text = re.sub(r"<[^>]+>", " ", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page))
    con = duckdb.connect(str(cdm), read_only=True)
    source = con.execute("SELECT cdm_source_name, vocabulary_version FROM cdm_source").fetchone()
    con.close()
    assert "192671 Gastrointestinal hemorrhage" in text and "outcome_concepts" not in text
    assert "first NSAID exposure (cohort 1)" in text and "from day 1 to day 365 after the index date" in text
    assert source[0] in text and source[1] in text and __version__ in text
    assert "validation masked-token accuracy" in text and "Pretraining: masked-token loss" not in text  # (in a PNG)
    y = prepared.task.y
    rate = f"{y.mean() * 100:.1f}% ({int(y.sum()):,} of {len(y):,}) had the outcome within 1-365 days"
    assert rate in text
    assert "Peptic ulcer" in text            # a prior condition by name in Table 1 (it predicts GI bleeding)


def test_baseline_characteristics_match_pandas(results, report, prepared):
    ch = json.loads((report.parent / "results.json").read_text())["characteristics"]
    lab = prepared.task.labels.to_pandas()
    per = prepared.persons.to_pandas()[["subject_id", "birth_date", "sex"]]
    m = lab.merge(per, on="subject_id", how="left")
    age = (pd.to_datetime(m["index_date"]).dt.normalize() - pd.to_datetime(m["birth_date"])).dt.days / 365.25
    prior = prepared.codes.to_pandas().merge(lab, on="subject_id")
    prior = prior[prior["time"] < prior["index_date"]]
    for key, sel in (("with_outcome", m["label"] == 1), ("without_outcome", m["label"] == 0),
                     ("all", m["label"] >= 0)):
        assert ch["n"][key] == m.loc[sel, "subject_id"].nunique()
        assert ch["age"][key]["mean"] == pytest.approx(age[sel].mean(), abs=0.051)
        assert ch["age"][key]["sd"] == pytest.approx(age[sel].std(), abs=0.051)
        assert ch["age"][key]["median"] == pytest.approx(age[sel].median(), abs=0.051)
        sex = {r["sex"]: r["persons" if key == "all" else f"{key}_persons"] for r in ch["sex"]}
        assert sex["F"] == m.loc[sel & (m["sex"] == "F"), "subject_id"].nunique()
        groups = prior if key == "all" else prior[prior["label"] == int(key == "with_outcome")]
        counts = groups.groupby("code")["subject_id"].nunique()
        for row in ch["conditions"] + ch["drugs"]:
            got, want = row["persons" if key == "all" else f"{key}_persons"], int(counts.get(row["code"], 0))
            assert got == want if isinstance(got, int) else (want < 10 or got == "suppressed")
    everyone = prior.groupby("code")["subject_id"].nunique()
    listed = [r["persons"] for r in ch["conditions"]]
    assert listed == sorted(listed, reverse=True) and len(ch["conditions"]) == 10 and len(ch["drugs"]) == 10
    assert ch["conditions"][0]["persons"] == max(everyone[r["code"]] for r in ch["conditions"])
    assert {r["code"].split("/")[0] for r in ch["drugs"]} <= {"RxNorm", "CVX"}
    assert all(r["name"] for r in ch["conditions"] + ch["drugs"])


def test_characteristics_hide_small_cells(prepared, tmp_path):
    from omop_behrt.evaluation.characteristics import COMPLEMENT, baseline_characteristics
    ch = baseline_characteristics(prepared.task.labels, prepared.persons, prepared.codes, min_count=200)
    y = prepared.task.y
    assert int(y.sum()) < 200 and ch["n"]["with_outcome"] == "<200" and ch["n"]["without_outcome"] == COMPLEMENT
    assert ch["age"]["with_outcome"] is None and ch["outcome"]["positives"] == "<200" and ch["outcome"]["rate"] is None
    for r in ch["conditions"] + ch["drugs"]:
        assert r["persons"] >= 200 and r["with_outcome_persons"] == "<200"
        assert r["without_outcome_persons"] in ("<200", COMPLEMENT)
    (tmp_path / "results.json").write_text(json.dumps({"characteristics": ch}))
    assert check_shareable(tmp_path, min_count=200) == []
    # sexes sum to the column: one hidden sex hides another, so it cannot be got back by subtraction
    n = 40
    labels = pa.table({"subject_id": pa.array(np.arange(n), pa.int64()),
                       "index_date": pa.array(np.full(n, np.datetime64("2020-01-01"), "datetime64[us]")),
                       "label": pa.array((np.arange(n) < 20).astype(np.int8))})
    persons = pa.table({"subject_id": pa.array(np.arange(n), pa.int64()),
                        "birth_date": pa.array(np.full(n, np.datetime64("1960-01-01"), "datetime64[D]")),
                        "sex": pa.array(["U"] * 3 + ["F"] * 20 + ["M"] * 17)})
    codes = pa.table({"subject_id": pa.array(np.arange(n), pa.int64()),
                      "time": pa.array(np.full(n, np.datetime64("2019-01-01"), "datetime64[us]")),
                      "code": pa.array(["RxNorm/1"] * 15 + ["SNOMED/2"] * 25)})
    small = baseline_characteristics(labels, persons, codes)
    sex = {r["sex"]: r for r in small["sex"]}
    assert sex["U"]["persons"] == "<10" and COMPLEMENT in (sex["F"]["persons"], sex["M"]["persons"])
    assert small["n"] == {"with_outcome": 20, "without_outcome": 20, "all": 40}
    assert small["age"]["all"]["mean"] == 60.0 and small["drugs"][0]["persons"] == 15
    assert small["drugs"][0]["without_outcome_persons"] == 0           # zero says nothing: shown
    assert small["conditions"][0] == {"code": "SNOMED/2", "name": None, "persons": 25, "with_outcome_persons": "<10",
                                      "without_outcome_persons": COMPLEMENT}


_SANE = {"auroc": 0.75, "auroc_ci": [0.70, 0.80], "auprc": 0.3, "brier": 0.080, "prevalence": 0.1,
         "calibration_intercept": 0.0, "calibration_slope": 1.1}
_DEGENERATE = {"auroc": 0.52, "auroc_ci": [0.45, 0.60], "auprc": 0.11, "brier": 0.095, "prevalence": 0.1,
               "calibration_intercept": 0.3, "calibration_slope": 275.0}


def test_warnings_flag_degenerate_results_only():
    res = {"n": {"train": {"rows": 1000, "persons": 1000, "positives": 100}}, "methods": {"counts-lr": _SANE}}
    assert result_warnings(res) == []
    res["methods"]["finetuned-scratch"] = _DEGENERATE
    got = {(w["method"], w["metric"]) for w in result_warnings(res)}
    assert got == {("finetuned-scratch", "calibration slope"), ("finetuned-scratch", "Brier"),
                   ("finetuned-scratch", "AUROC")}
    over = result_warnings({"methods": {"m": {**_SANE, "calibration_slope": 0.05}}})
    assert [w["metric"] for w in over] == ["calibration slope"] and "over-fitted" in over[0]["why"]


def test_report_shows_a_warning_box_for_degenerate_results(results, report, prepared, tiny_model, tmp_path):
    page = report.read_text()
    expected = result_warnings(shareable_results(results))
    assert ("Check these results" in page) == bool(expected)
    bad = copy.deepcopy(results)
    bad["methods"] = {"counts-lr": _SANE, "finetuned-scratch": _DEGENERATE}
    bad["n"]["train"] = {"rows": 1000, "persons": 1000, "positives": 100}
    bad.pop("test_predictions")
    bad["leakage"] = None                     # the leakage line has its own test (test_leakage.py)
    page = write_report(tmp_path / "bad", bad, tiny_model, prep=prepared).read_text()
    box = page.split("<div class='warn'>")[1].split("</div>")[0]
    assert box.count("<li>") == 3 and "calibration slope 275.00" in box and "contains 0.5" in box
    assert "no better than 0.090" in box and "counts-lr" not in box


def test_report_folder_is_shareable(report):
    assert check_shareable(report.parent) == []
    assert "omop-behrt-per-person" not in report.read_text()


def test_report_renders_in_chromium(report, tmp_path):
    if chromium() is None:
        pytest.skip("no chromium on PATH: the rendered report is not checked (apt-get install chromium)")
    from PIL import Image
    png = screenshot(report, tmp_path / "report.png", height=12000)
    img = np.asarray(Image.open(png).convert("L"))
    assert img.shape[1] == 1280 and img.shape[0] > 3000          # the whole page, not one screen
    dark = (img < 128).mean(axis=1)
    assert (dark > 0).mean() > 0.3                               # text and plots down the page, not a blank one


def test_cli_task_and_evaluate(cdm, tiny_model, tmp_path, capsys):
    rc = main(["task", "plp", "--source", str(cdm), "--target-cohort-id", "1", "--outcome-concepts", "192671",
               "--out", str(tmp_path / "task")])
    assert rc == 0 and "kept" in capsys.readouterr().out
    t = Task.load(tmp_path / "task")
    Task(t.labels.slice(0, 500), t.definition, t.attrition).save(tmp_path / "task")
    rc = main(["evaluate", "--model", str(tiny_model), "--source", str(cdm), "--task", str(tmp_path / "task"),
               "--methods", "embeddings-lr,counts-lr", "--no-few-shot", "--bootstrap", "20",
               "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 0 and "counts-lr" in out and (tmp_path / "rep" / "report.html").exists()
    rc = main(["finetune", "--model", str(tiny_model), "--source", str(cdm), "--task", str(tmp_path / "task"),
               "--epochs", "1", "--min-steps", "2", "--out", str(tmp_path / "head")])
    assert rc == 0 and "test AUROC" in capsys.readouterr().out and (tmp_path / "head" / "model.safetensors").exists()
    assert main(["evaluate", "--model", str(tiny_model), "--source", str(cdm), "--task", str(tmp_path / "nope")]) == 2
    assert "labels.parquet" in capsys.readouterr().err

"""What leaves a site: the evaluation report and results are aggregates only; `check-shareable` finds the rest.

Issue 10 (privacy): the HTML report showed one identified person's record (the attention example),
``results.json`` held per-person predictions with outcomes, and the model directory held every training
person's sequence. Each case is reproduced here against the real Eunomia fixtures with a tiny model.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from omop_behrt.evaluation import comparison
from omop_behrt.cli.main import main
from omop_behrt.evaluation.metrics import binary_metrics, shareable_results, write_predictions, write_results
from omop_behrt.evaluation.report import PER_PERSON_MARKER, write_report
from omop_behrt.shareable import check_shareable
from omop_behrt.tasks.labels import Task, plp_task, save_split, split_persons
from cdm_fixtures import copy_with_nsaid_cohort

# -- fixtures: one tiny evaluation on Eunomia, shared by the report tests -------------------------------
@pytest.fixture(scope="module")
def cdm(eunomia_db, tmp_path_factory):
    return copy_with_nsaid_cohort(eunomia_db, tmp_path_factory.mktemp("shareable"))


@pytest.fixture(scope="module")
def task_dir(cdm, tmp_path_factory):
    t = plp_task(cdm, 1, outcome_concepts=[192671], results_schema="results")
    task = Task(t.labels.slice(0, 500), t.definition, t.attrition)
    out = tmp_path_factory.mktemp("shareable_task")
    task.save(out)
    subjects = task.labels["subject_id"].to_numpy()
    save_split(out / "split.parquet", subjects, split_persons(subjects, (0.5, 0.1, 0.4), seed=0))  # >= 10 positive
    return out


@pytest.fixture(scope="module")
def evaluated(cdm, task_dir, tiny_model, tmp_path_factory):
    """`omop-behrt evaluate` with the defaults (plus --save-predictions outside the report folder)."""
    out = tmp_path_factory.mktemp("shareable_eval")
    rc = main(["evaluate", "--model", str(tiny_model), "--source", str(cdm), "--task", str(task_dir),
               "--methods", "embeddings-lr,counts-lr", "--no-few-shot", "--bootstrap", "20",
               "--report", str(out / "report"), "--json", str(out / "results.json"),
               "--save-predictions", str(out / "predictions.csv")])
    assert rc == 0
    return out


# -- case 1: metrics, curves and counts are aggregates ---------------------------------------------------
def test_curves_have_at_least_min_count_persons_per_step():
    rng = np.random.default_rng(0)
    y = (rng.random(157) < 0.3).astype(int)
    p = np.clip(0.3 * y + rng.random(157) * 0.7, 0, 1)
    m = binary_metrics(y, p, n_boot=0)
    P, N = int(y.sum()), int(len(y) - y.sum())
    roc = m["curves"]["roc"]
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    step = np.diff(np.array(roc["tpr"]) * P + np.array(roc["fpr"]) * N)      # persons passed per step
    assert np.all(np.round(step) >= 10) and len(roc["fpr"]) <= 157 // 10 + 1   # not one point per person
    assert len(m["curves"]["pr"]["recall"]) == len(roc["fpr"])
    cal = m["curves"]["calibration"]
    assert len(cal["persons"]) == 10 and min(cal["persons"]) >= 10 and sum(cal["persons"]) == 157
    # a test set of 37 gets 3 calibration bins, each of >= 10 persons, not 10 bins of 3-4
    small = binary_metrics(y[:37], p[:37], n_boot=0)["curves"]["calibration"]
    assert len(small["persons"]) == 3 and min(small["persons"]) >= 10 and sum(small["persons"]) == 37
    # fewer than min_count positives: no curve at all (its steps would be single persons)
    y2 = np.r_[np.ones(4, int), np.zeros(60, int)]
    few = binary_metrics(y2, rng.random(64), n_boot=0)
    assert few["curves"] is None and "fewer than 10" in few["curves_withheld"]


def test_results_json_holds_aggregates_only(tmp_path):
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.2).astype(int)
    p = rng.random(200)
    res = {"task": {"definition": {"kind": "plp", "tar_end": 365},
                    "attrition": {"target entries": 900, "excluded: prior outcome": 4, "kept": 896, "outcomes": 41}},
           "n": {"train": {"rows": 500, "persons": 500, "positives": 90},
                 "test": {"rows": 200, "persons": 200, "positives": int(y.sum())}},
           "methods": {"m": binary_metrics(y, p, n_boot=5)},
           "few_shot": [{"method": "m", "fraction": 0.01, "n_train": 6, "train_positives": 1, "auroc": 0.5}],
           "seconds": {"m": 1.0}, "features": {"counts": 3},
           "test_predictions": {"subject_id": list(range(200)), "y": y.tolist(), "m": p.tolist()}}
    out = shareable_results(res, min_count=10)
    assert "test_predictions" not in out and "test_predictions" in res            # the input is not changed
    assert out["task"]["attrition"]["excluded: prior outcome"] == "<10" and out["task"]["attrition"]["kept"] == 896
    # ... and target entries - kept would give it back: the total is hidden too (complementary suppression)
    assert out["task"]["attrition"]["target entries"] == "suppressed" and out["task"]["attrition"]["outcomes"] == 41
    two = shareable_results(dict(res, task={"attrition": {"target entries": 930, "excluded: a": 4, "excluded: b": 30,
                                                          "excluded: c": 12, "kept": 884}}))["task"]["attrition"]
    assert two == {"target entries": 930, "excluded: a": "<10", "excluded: b": 30, "excluded: c": "suppressed",
                   "kept": 884}
    assert out["few_shot"][0]["n_train"] == "<10" and out["few_shot"][0]["train_positives"] == "<10"
    assert out["n"]["test"]["positives"] == int(y.sum()) and out["features"]["counts"] == 3  # not a person count
    # val positives below min_count: the smallest other split's positives go too (outcomes - the rest)
    val = shareable_results(dict(res, n=dict(res["n"], val={"rows": 100, "persons": 100, "positives": 6})))["n"]
    assert val["val"]["positives"] == "<10" and val["test"]["positives"] == "suppressed"
    assert val["train"]["positives"] == 90
    assert out["task"]["definition"]["tar_end"] == 365
    path = write_results(res, tmp_path / "results.json")
    text = path.read_text()
    assert "subject_id" not in text and json.loads(text)["methods"]["m"]["n"] == 200
    assert check_shareable(tmp_path) == []
    # min_count is an option: at 50, the 41 outcomes are suppressed too
    assert shareable_results(res, min_count=50)["task"]["attrition"]["outcomes"] == "<50"
    # prevalence would give the suppressed positives back: it goes with them
    few = dict(res, methods={"m": dict(res["methods"]["m"], positives=7, prevalence=7 / 200)})
    assert shareable_results(few)["methods"]["m"]["positives"] == "<10"
    assert shareable_results(few)["methods"]["m"]["prevalence"] is None
    # per-person predictions only on request, to their own file
    preds = write_predictions(res, tmp_path / "preds.parquet")
    t = pq.read_table(preds)
    assert t.column_names == ["subject_id", "y", "m"] and t.num_rows == 200
    assert t["subject_id"].to_pylist() == list(range(200))


# -- case 3: evaluate with the defaults gives a shareable report folder -------------------------------
def test_evaluate_defaults_give_a_shareable_report(evaluated, task_dir, capsys):
    rep = evaluated / "report"
    assert sorted(p.name for p in rep.iterdir()) == ["report.html", "results.json"]
    assert check_shareable(rep) == []
    page = (rep / "report.html").read_text()
    assert PER_PERSON_MARKER not in page and not re.search(r"\bPerson \d", page)
    assert "Mean last-layer attention" in page and "test persons" in page
    res = json.loads((rep / "results.json").read_text())
    table1 = res.pop("characteristics")                        # the report's results.json adds Table 1
    assert table1 and "test_predictions" not in res and res == json.loads((evaluated / "results.json").read_text())
    n_test = res["n"]["test"]["rows"]
    for m in res["methods"].values():
        assert len(m["curves"]["roc"]["fpr"]) <= n_test // 10 + 1
        assert min(m["curves"]["calibration"]["persons"]) >= 10
    assert all(v["positives"] in ("<10", "suppressed") or v["positives"] >= 10 for v in res["n"].values())
    capsys.readouterr()
    assert main(["check-shareable", str(rep)]) == 0
    assert capsys.readouterr().out.strip() == "shareable: 2 files checked"


def test_predictions_are_opt_in_and_fail_the_check(evaluated, task_dir, tmp_path, capsys):
    t = pacsv.read_csv(evaluated / "predictions.csv")
    labels = Task.load(task_dir).labels
    assert t.column_names == ["subject_id", "y", "embeddings-lr", "counts-lr"]
    assert set(t["subject_id"].to_pylist()) <= set(labels["subject_id"].to_pylist())
    rep = tmp_path / "report"
    shutil.copytree(evaluated / "report", rep)
    shutil.copy(evaluated / "predictions.csv", rep)
    found = check_shareable(rep)
    assert [f.file for f in found] == ["predictions.csv"] and "subject_id" in found[0].why
    capsys.readouterr()
    assert main(["check-shareable", str(rep)]) == 1
    out = capsys.readouterr().out
    assert "predictions.csv" in out and "not shareable: 1 finding" in out


def test_example_person_is_opt_in_and_marked(evaluated, cdm, task_dir, tiny_model, tmp_path):
    task = Task.load(task_dir)
    prep = comparison.prepare(tiny_model, cdm, task)
    res = {"task": {"attrition": {"target entries": 80, "excluded: prior outcome": 3}}, "n": {}, "methods": {},
           "few_shot": [{"method": "m", "fraction": 0.05, "n_train": 12, "train_positives": 2, "auroc": 0.6,
                         "auprc": 0.3}]}
    rng = np.random.default_rng(0)
    y = (rng.random(80) < 0.3).astype(int)
    res["methods"]["m"] = binary_metrics(y, rng.random(80), n_boot=0)
    sid = int(prep.seqs.subject_id[np.argmax(prep.seqs.lengths)])
    page = write_report(tmp_path / "one", res, tiny_model, seqs=prep.seqs, cdm=cdm, example_person=sid).read_text()
    assert PER_PERSON_MARKER in page and f"Person {sid}" in page
    found = check_shareable(tmp_path / "one")
    assert len(found) == 1 and found[0].file == "report.html" and "per-person" in found[0].what
    # the rest of the page still suppresses counts below min_count (attrition, few-shot), as results.json does
    assert page.count("<td>&lt;10</td>") == 2 and "<td>3</td>" not in page and "<td>2</td>" not in page
    shown = json.loads((tmp_path / "one" / "results.json").read_text())
    assert shown["few_shot"][0]["train_positives"] == "<10"
    assert shown["task"]["attrition"]["excluded: prior outcome"] == "<10"
    assert check_shareable(tmp_path / "one" / "results.json") == []
    with pytest.raises(ValueError, match="subject 999999999 is not"):
        write_report(tmp_path / "x", res, tiny_model, seqs=prep.seqs, example_person=999999999)


# -- case 2: check-shareable on model directories, coverage reports, tokens and data files ---------------
def test_model_directory(tiny_model, tmp_path):
    found = check_shareable(tiny_model)
    if (tiny_model / "data").exists():       # today's model directory keeps the training caches: the complaint
        bad = {f.file for f in found}
        assert any(re.fullmatch(r"data/(train|val)/part-\d+\.npz", f) for f in bad)
        assert any("subject_id" in f.why for f in found if f.file.endswith(".npz"))
    clean = tmp_path / "model"
    shutil.copytree(tiny_model, clean, ignore=shutil.ignore_patterns("data"))
    assert check_shareable(clean) == []
    # a token seen in 3 persons in tokens.json
    tokens = json.loads((clean / "tokens.json").read_text())
    rare = next(t for t, v in tokens["tokens"].items() if v["persons"] > 0)
    tokens["tokens"][rare]["persons"] = 3
    (clean / "tokens.json").write_text(json.dumps(tokens))
    found = check_shareable(clean)
    assert len(found) == 1 and found[0].file == "tokens.json" and "1 token" in found[0].what
    # person ids in metadata.json
    meta = json.loads((clean / "metadata.json").read_text()) if (clean / "metadata.json").exists() else {}
    (clean / "metadata.json").write_text(json.dumps(dict(meta, training_data={"person_ids": [11, 12]})))
    assert {f.file for f in check_shareable(clean)} == {"tokens.json", "metadata.json"}


def test_coverage_report_with_a_code_seen_in_one_person(tmp_path):
    rows = [{"domain": "condition", "code": "ICD10CM/E11.9", "source_code": None, "events": 40, "persons": 25},
            {"domain": "condition", "code": "ICD10CM/Q87.1", "source_code": None, "events": 3, "persons": 1}]
    (tmp_path / "report.json").write_text(json.dumps({"vocab": "caliber", "events": 900, "top_unmapped": rows}))
    found = check_shareable(tmp_path)
    assert len(found) == 1 and "ICD10CM/Q87.1" in found[0].why and "top_unmapped" in found[0].what
    rows.pop()
    (tmp_path / "report.json").write_text(json.dumps({"vocab": "caliber", "events": 900, "top_unmapped": rows}))
    assert check_shareable(tmp_path) == []
    # a list of codes with event counts only: nothing shows each was seen in >= min_count persons
    rows[0].pop("persons")
    (tmp_path / "report.json").write_text(json.dumps({"top_unmapped": rows}))
    assert "person count" in check_shareable(tmp_path)[0].why


def test_data_files_and_text(tmp_path):
    pq.write_table(pa.table({"person_id": [1, 2], "code": ["a", "b"]}), tmp_path / "rows.parquet")
    (tmp_path / "bench.csv").write_text("method,auroc\nlr,0.71\n")
    (tmp_path / "cohort.csv").write_text("subject_id,cohort_start_date\n5,2020-01-01\n")
    (tmp_path / "births.csv").write_text("id,date_of_birth\n5,1970-01-01\n")
    (tmp_path / "weights.pt").write_bytes(b"\x80\x02opaque")
    (tmp_path / "run.log").write_text("step 3 done\nbad row: person_id=4711\n")
    np.savez(tmp_path / "arrays.npz", subject_id=np.arange(3))
    found = {f.file: f for f in check_shareable(tmp_path)}
    assert set(found) == {"rows.parquet", "cohort.csv", "births.csv", "weights.pt", "run.log", "arrays.npz"}
    assert "person_id" in found["rows.parquet"].why and "date_of_birth" in found["births.csv"].why
    assert "4711" in found["run.log"].why
    with pytest.raises(FileNotFoundError, match="nope"):
        check_shareable(tmp_path / "nope")
    # a benchmark table alone is fine; a data file inside a report folder is not, whatever its columns
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(tmp_path / "bench.csv", only)
    assert check_shareable(only) == []
    (only / "report.html").write_text("<html><body>ok</body></html>")
    assert [f.file for f in check_shareable(only)] == ["bench.csv"]


def test_real_coverage_reports(eunomia_events, eunomia_db, tmp_path):
    """`vocab report --json` on Eunomia passes by default; with --show-rare-codes (every code listed) it fails."""
    from omop_behrt.vocab.mapping import map_events
    shared = map_events(eunomia_events, "caliber", cdm=eunomia_db, progress=False, sort=False, top_unmapped=100_000)
    shared.report.write_json(tmp_path / "shared" / "report.json")
    assert check_shareable(tmp_path / "shared") == []
    rare = map_events(eunomia_events, "caliber", cdm=eunomia_db, progress=False, sort=False, top_unmapped=100_000,
                      show_rare_codes=True)
    rare.report.write_json(tmp_path / "rare" / "report.json")
    listed = [r for r in json.loads((tmp_path / "rare" / "report.json").read_text())["top_unmapped"]
              if r["persons"] < 10]
    found = check_shareable(tmp_path / "rare")
    assert listed and [f.what for f in found] == [
        "marked not shareable", f"{len(listed)} listed codes at top_unmapped not shown to be seen in >= 10 persons"]
    assert listed[0]["code"] in found[1].why

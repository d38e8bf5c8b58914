"""Benchmark suites over event directories: index dates, labels (checked against an independent pandas count),
censoring, the kinds of outcome, the spec's errors, the paired macro bootstrap and the CLI end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from omop_behrt.evaluation.benchmark import BASELINE, macro_table
from omop_behrt.events import EVENTS_SCHEMA, OBSERVATION_PERIODS_SCHEMA, PERSONS_SCHEMA, EventDir
from omop_behrt.tasks.suite import Suite, build, censor, suite_names

DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def eunomia_suite(eunomia_events):
    return build(eunomia_events, "eunomia")


def _expected_labels(events: EventDir, index: pd.DataFrame, codes, start: int, end: int, new_onset: bool):
    """The labels as a reader of the module docstring would compute them, row by row in pandas."""
    ev = events.read_events(["subject_id", "time", "code"]).to_pandas()
    persons = events.persons().to_pandas().set_index("subject_id")
    op = events.observation_periods().to_pandas().groupby("subject_id")["end_date"].max()
    last = ev.groupby("subject_id")["time"].max()
    hits = ev[ev["code"].isin(codes)]
    by_person = {s: g["time"].to_numpy() for s, g in hits.groupby("subject_id")}
    out = {}
    for s, ix in zip(index["subject_id"], index["index_date"]):
        times = by_person.get(s, np.array([], "datetime64[ns]"))
        follow = pd.Timestamp(op[s]) if s in op.index else last[s]
        death = persons.loc[s, "death_date"]
        if death is not None and not pd.isna(death):
            follow = min(follow, pd.Timestamp(death))
        times_seen = times[times < follow + DAY]          # outcomes dated after the record ends are not observed
        hit = bool(((times_seen >= ix + start * DAY) & (times_seen < ix + (end + 1) * DAY)).any())
        if new_onset and (times_seen < ix).any():
            continue
        if not hit and follow < ix + end * DAY:
            continue
        out[(s, ix)] = int(hit)
    return out


@pytest.mark.parametrize("task_name", ["sinusitis_1y", "gi_disorder_5y"])
def test_labels_equal_an_independent_count(eunomia_events, eunomia_suite, task_name):
    built = eunomia_suite
    spec = next(t for t in built.suite.tasks if t.name == task_name)
    ix = built.index.to_pandas()
    expected = _expected_labels(eunomia_events, ix, spec.codes, *spec.window, spec.new_onset)
    got = built.tasks[task_name].labels.to_pandas()
    assert dict(zip(zip(got["subject_id"], got["index_date"]), got["label"].astype(int))) == expected
    assert built.tasks[task_name].attrition["rows"] == len(expected)
    assert built.tasks[task_name].attrition["positives"] == sum(expected.values())
    # the rows point back into the index
    assert (ix["subject_id"].to_numpy()[built.rows[task_name]] == got["subject_id"].to_numpy()).all()


def test_index_dates_one_per_person_seeded_and_at_a_condition_day(eunomia_events, eunomia_suite):
    ix = eunomia_suite.index.to_pandas()
    assert ix["subject_id"].is_unique and len(ix) == 2694
    assert (ix["index_date"].dt.normalize() == ix["index_date"]).all()        # 00:00 of a day
    ev = eunomia_events.read_events(["subject_id", "time", "domain"]).to_pandas()
    cond_days = set(zip(ev.loc[ev["domain"] == "condition", "subject_id"],
                        ev.loc[ev["domain"] == "condition", "time"].dt.normalize()))
    assert all((s, d - DAY) in cond_days for s, d in zip(ix["subject_id"], ix["index_date"]))
    first = ev.groupby("subject_id")["time"].min()
    assert ((ix["index_date"] - DAY).to_numpy() >= (first[ix["subject_id"]] + 365 * DAY).to_numpy()).all()
    again = build(eunomia_events, "eunomia").index
    assert again.equals(eunomia_suite.index)
    spec = Suite.load("eunomia")
    spec.index["seed"] = 1
    other = build(eunomia_events, spec).index.to_pandas()
    assert (other["index_date"] != ix["index_date"]).mean() > 0.5
    # one split for the suite, by person
    assert set(eunomia_suite.split) == {"train", "val", "test"}
    assert abs((eunomia_suite.split == "test").mean() - 0.2) < 0.01


def test_shipped_suite_meets_its_positives_goal_or_says_so(eunomia_suite):
    from omop_behrt.tasks.suite import task_problems
    counts = eunomia_suite.counts()
    assert len(counts) >= 8
    problems = task_problems(eunomia_suite)
    for name, c in counts.items():
        assert c["train"]["positives"] > 0 and c["test"]["positives"] > 0
        assert (c["test"]["positives"] >= 30) == (name not in problems), (name, c)
    assert "eunomia" in suite_names()


def test_censor_keeps_only_events_before_each_index(eunomia_events, eunomia_suite, tmp_path):
    ix = eunomia_suite.index.slice(0, 2000)           # persons 2001.. have no index row: they keep everything
    out = censor(eunomia_events, ix, tmp_path / "c")
    ev = out.read_events(["subject_id", "time"]).to_pandas()
    full = eunomia_events.read_events(["subject_id", "time"]).to_pandas()
    cut = ix.to_pandas().set_index("subject_id")["index_date"]
    indexed = ev["subject_id"].isin(cut.index)
    assert (ev.loc[indexed, "time"].to_numpy() < cut[ev.loc[indexed, "subject_id"]].to_numpy()).all()
    kept_full = full[full["subject_id"].isin(cut.index)]
    expected = (kept_full["time"].to_numpy() < cut[kept_full["subject_id"]].to_numpy()).sum()
    assert indexed.sum() == expected
    assert (~indexed).sum() == (~full["subject_id"].isin(cut.index)).sum()
    counts = out.manifest["counts"]
    assert counts["events_in"] == counts["events_out"] + counts["on_or_after_index"] == len(full)
    assert out.manifest["censored_at"]


def _tiny_dir(tmp_path) -> EventDir:
    """Four persons with known visits and deaths, for the visit / long-stay / death kinds and follow-up."""
    t = lambda s: pd.Timestamp(s)  # noqa: E731
    rows = [  # subject, time, code, domain, end_time
        (1, t("2010-01-01"), "SNOMED/1", "condition", None),
        (1, t("2012-03-01"), "Visit/IP", "visit", t("2012-03-09")),          # 8-day stay
        (2, t("2010-01-01"), "SNOMED/1", "condition", None),
        (2, t("2012-03-01"), "Visit/IP", "visit", t("2012-03-02")),          # 1-day stay
        (3, t("2010-01-01"), "SNOMED/1", "condition", None),
        (3, t("2011-06-01"), "SNOMED/2", "condition", None),
        (4, t("2010-01-01"), "SNOMED/1", "condition", None),
        (4, t("2011-01-01"), "SNOMED/9", "condition", None),
        (4, t("2012-01-01"), "Visit/IP", "visit", t("2012-01-02")),          # after its record ends (2011-06-01)
    ]
    ev = pd.DataFrame(rows, columns=["subject_id", "time", "code", "domain", "end_time"])
    table = pa.table({"subject_id": pa.array(ev["subject_id"], pa.int64()),
                      "time": pa.array(ev["time"], pa.timestamp("us")), "code": ev["code"],
                      "domain": ev["domain"], "end_time": pa.array(ev["end_time"], pa.timestamp("us"))})
    table = pa.table({f.name: table[f.name] if f.name in table.column_names else pa.nulls(len(ev), f.type)
                      for f in EVENTS_SCHEMA}, schema=EVENTS_SCHEMA)
    root = tmp_path / "ev"
    (root / "events").mkdir(parents=True)
    import pyarrow.parquet as pq
    pq.write_table(table, root / "events" / "part-0.parquet")
    death = [None, None, pd.Timestamp("2012-06-01").date(), None]
    pq.write_table(pa.table({"subject_id": pa.array([1, 2, 3, 4], pa.int64()),
                             "birth_date": pa.array([pd.Timestamp("1980-01-01").date()] * 4, pa.date32()),
                             "sex": ["F", "M", "F", "M"], "death_date": pa.array(death, pa.date32()),
                             "source_id": ["a", "b", "c", "d"]}, schema=PERSONS_SCHEMA), root / "persons.parquet")
    end = [pd.Timestamp(s).date() for s in ("2014-01-01", "2014-01-01", "2012-06-01", "2011-06-01")]
    pq.write_table(pa.table({"subject_id": pa.array([1, 2, 3, 4], pa.int64()),
                             "start_date": pa.array([pd.Timestamp("2010-01-01").date()] * 4, pa.date32()),
                             "end_date": pa.array(end, pa.date32())}, schema=OBSERVATION_PERIODS_SCHEMA),
                   root / "observation_periods.parquet")
    (root / "manifest.json").write_text("{}")
    return EventDir.open(root)


def test_visit_long_stay_death_and_follow_up(tmp_path):
    ev = _tiny_dir(tmp_path)
    spec = Suite.from_dict({"name": "t", "index": {"kind": "random", "min_history_days": 0, "min_followup_days": 0},
                            "tasks": [{"name": "ip", "kind": "visit", "codes": ["Visit/IP"], "window": [0, 1000]},
                                      {"name": "long", "kind": "long_stay", "min_stay_days": 7, "window": [0, 1000]},
                                      {"name": "death", "kind": "death", "window": [0, 1000]},
                                      {"name": "s9", "codes": ["SNOMED/9"], "window": [0, 1000], "new_onset": True}]})
    from omop_behrt.tasks.suite import _connect, _spans, task_labels
    con = _connect(ev)
    _spans(con)
    ix = pa.table({"cohort_definition_id": pa.array([0] * 4, pa.int64()),
                   "subject_id": pa.array([1, 2, 3, 4], pa.int64()),
                   "index_date": pa.array([pd.Timestamp("2011-01-01")] * 3 + [pd.Timestamp("2011-02-01")],
                                          pa.timestamp("us"))})
    got = {t.name: dict(zip(*[task_labels(con, ix, t)[0].labels[c].to_pylist() for c in ("subject_id", "label")]))
           for t in spec.tasks}
    # person 3 dies 2012-06-01 (inside the window, no visit): not followed to the end -> excluded, except for death;
    # person 4's record ends 2011-06-01: its visit dated 2012 is not an observed outcome, so without follow-up to the
    # window's end it is excluded; its SNOMED/9 came before index: new_onset drops it
    assert got["ip"] == {1: 1, 2: 1}
    assert got["long"] == {1: 1, 2: 0}
    assert got["death"] == {1: 0, 2: 0, 3: 1}
    assert got["s9"] == {1: 0, 2: 0}
    con.close()


def test_spec_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\ntasks:\n  - {name: a, codes: [X/1], windw: [0, 3]}\n")
    with pytest.raises(ValueError, match=r"s\.yaml: tasks\[0\] \(a\): unknown keys \['windw'\]"):
        Suite.load(bad)
    bad.write_text("name: x\ntasks:\n  - {name: a, kind: lab, codes: [X/1]}\n")
    with pytest.raises(ValueError, match="kind must be one of code, visit, long_stay, death; got 'lab'"):
        Suite.load(bad)
    with pytest.raises(ValueError, match="unknown suite 'nope'; shipped suites: .*eunomia"):
        Suite.load("nope")


def test_macro_is_the_mean_with_a_paired_bootstrap():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    preds = {}
    for t in ("a", "b"):
        y = rng.integers(0, 2, 300)
        good = y + rng.normal(0, 1.0, 300)
        preds[t] = {"y": y, "counts-lr": good, "counts-gbm": rng.normal(size=300), "same": good.copy()}
    out = macro_table(preds, n_boot=200, seed=0)
    m = out["methods"]
    expected = np.mean([roc_auc_score(preds[t]["y"], preds[t]["counts-lr"]) for t in ("a", "b")])
    assert m["counts-lr"]["auroc"] == pytest.approx(expected)
    assert m[BASELINE]["auroc"] == pytest.approx(expected)          # counts-lr wins both tasks
    assert m["same"]["vs_counts"] == 0 and m["same"]["vs_counts_ci"] == [0.0, 0.0]   # paired: identical resamples
    lo, hi = m["counts-gbm"]["vs_counts_ci"]
    assert hi < 0 and m["counts-gbm"]["auroc"] == pytest.approx(0.5, abs=0.08)
    assert m["counts-lr"]["auroc_ci"][0] < expected < m["counts-lr"]["auroc_ci"][1]


def test_benchmark_cli_end_to_end(eunomia_events, tiny_model, tmp_path):
    """The CLI with a given model (no pretraining): table printed, results.json = aggregates whose macro is the
    mean of the tasks, the HTML page, and nothing per person in either."""
    suite = tmp_path / "s.yaml"
    spec = Suite.load("eunomia").to_dict()
    spec["tasks"] = [t for t in spec["tasks"] if t["name"] in ("sinusitis_1y", "nsaid_new_use_5y", "inpatient_5y")]
    import yaml
    suite.write_text(yaml.safe_dump(spec))
    work = tmp_path / "w"
    r = subprocess.run([sys.executable, "-m", "omop_behrt", "benchmark", "--source", str(eunomia_events.path),
                        "--suite", str(suite), "--work-dir", str(work), "--model", f"tiny={tiny_model}",
                        "--bootstrap", "50", "--quiet", "--methods", "counts-lr,embeddings-lr"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "macro AUROC" in r.stdout and "nsaid_new_use_5y" in r.stdout
    res = json.loads((work / "results.json").read_text())
    tasks = res["macro"]["tasks"]
    assert tasks == ["sinusitis_1y", "nsaid_new_use_5y", "inpatient_5y"]
    for m in ("counts-lr", "embeddings-lr"):
        mean = np.mean([res["tasks"][t]["methods"][m]["auroc"] for t in tasks])
        assert res["macro"]["methods"][m]["auroc"] == pytest.approx(mean)
    html = (work / "benchmark.html").read_text()
    assert "Macro over 3 tasks" in html and "inpatient_5y" in html
    from omop_behrt.shareable import check_shareable
    for f in (work / "results.json", work / "benchmark.html"):
        assert check_shareable(f) == []
    subjects = set(eunomia_events.persons()["subject_id"].to_pylist())
    assert "subject_id" not in json.dumps(res) and "test_predictions" not in json.dumps(res)
    assert res["attrition"]["index rows"] == len(subjects)


def test_local_pretraining_is_censored_and_keyed_by_its_settings(eunomia_events, eunomia_suite, tmp_path):
    """The benchmark's own model learns only from events before the index dates (no leakage warning for any
    task); other settings never reuse it, the same settings do."""
    from omop_behrt.evaluation.benchmark import pretrain_local
    from omop_behrt.tasks.labels import pretraining_overlap
    a = pretrain_local(eunomia_events, eunomia_suite, tmp_path, {"max_steps": 3, "device": "cpu"})
    assert pretrain_local(eunomia_events, eunomia_suite, tmp_path, {"max_steps": 3, "device": "cpu"}) == a
    b = pretrain_local(eunomia_events, eunomia_suite, tmp_path, {"max_steps": 4, "device": "cpu"})
    assert b != a and (b / "model.safetensors").exists()
    meta = json.loads((a / "metadata.json").read_text())
    for task in eunomia_suite.tasks.values():
        assert pretraining_overlap(meta, task) is None
    c = pretrain_local(eunomia_events, eunomia_suite, tmp_path, {"init": a, "max_steps": 2, "device": "cpu"})
    assert c not in (a, b)
    assert json.loads((c / "metadata.json").read_text())["init_model"]["model_id"] == meta["model_id"]


def test_benchmark_cli_bad_input_is_one_line(capsys):
    """A repeated model name, a malformed --model or a missing --source: one line, exit 2, before any work."""
    from omop_behrt.cli.main import main
    for argv, says in ((["--source", "x", "--work-dir", "w", "--model", "a=m1", "--model", "a=m2"],
                        "two models are named 'a'"),
                       (["--source", "x", "--work-dir", "w", "--model", "=m1"], "--model takes NAME=DIR or DIR"),
                       (["--work-dir", "w"], "benchmark needs --source and --work-dir")):
        assert main(["benchmark", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err

"""Prediction tasks: PLP labels against an independent computation, no leakage either way, BEHRT T1-T3, splits."""
from __future__ import annotations


import duckdb
import numpy as np
import pyarrow as pa
import pytest

from omop_behrt.tasks import cohorts
from omop_behrt.tasks.labels import Task, behrt_task, load_split, plp_task, save_split, split_persons
from cdm_fixtures import copy_with_nsaid_cohort

@pytest.fixture(scope="module")
def nsaid_cdm(eunomia_db, tmp_path_factory):
    """A private Eunomia copy with cohort 1 = first NSAID exposure."""
    return copy_with_nsaid_cohort(eunomia_db, tmp_path_factory.mktemp("plp"))


@pytest.fixture(scope="module")
def gi_task(nsaid_cdm) -> Task:
    return plp_task(nsaid_cdm, 1, outcome_concepts=[192671], results_schema="results")


def test_plp_labels_match_an_independent_computation(nsaid_cdm, gi_task):
    con = duckdb.connect(str(nsaid_cdm), read_only=True)
    exp = con.execute("""
        WITH t AS (SELECT subject_id, cohort_start_date AS d FROM results.cohort WHERE cohort_definition_id = 1),
        o AS (SELECT person_id, condition_start_date AS od FROM condition_occurrence WHERE condition_concept_id IN
              (SELECT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id = 192671)),
        p AS (SELECT t.subject_id, t.d, op.observation_period_end_date AS e FROM t JOIN observation_period op
              ON op.person_id = t.subject_id AND t.d BETWEEN op.observation_period_start_date
                                                 AND op.observation_period_end_date)
        SELECT subject_id, max(CASE WHEN od BETWEEN d + 1 AND d + 365 THEN 1 ELSE 0 END) AS y,
               max(CASE WHEN od < d + 1 THEN 1 ELSE 0 END) AS prior, min(e - d) AS follow
        FROM p LEFT JOIN o ON o.person_id = p.subject_id GROUP BY subject_id""").df()
    con.close()
    exp = exp[(exp.prior == 0) & ((exp.follow >= 364) | (exp.y == 1))].sort_values("subject_id")
    got = gi_task.labels.to_pandas().sort_values("subject_id")
    assert got.subject_id.tolist() == exp.subject_id.tolist()
    assert got.label.tolist() == exp.y.astype(int).tolist()
    assert gi_task.attrition["kept"] == len(got) and gi_task.attrition["outcomes"] == int(got.label.sum()) > 100


def test_plp_outcomes_only_after_index_and_prior_outcome_excluded(nsaid_cdm):
    ix = cohorts.CohortTable(nsaid_cdm, "results").read(1)
    # an index at the outcome itself: the outcome is then "before the time at risk" and the entry is excluded
    con = duckdb.connect(str(nsaid_cdm), read_only=True)
    bleed = con.execute("SELECT person_id, min(condition_start_date) FROM condition_occurrence WHERE "
                        "condition_concept_id = 192671 GROUP BY 1 ORDER BY 1 LIMIT 20").fetchall()
    con.close()
    at = pa.table({"subject_id": [r[0] for r in bleed], "index_date": pa.array([r[1] for r in bleed]).cast(
        pa.timestamp("us"))})
    t = plp_task(nsaid_cdm, at, outcome_concepts=[192671], tar_start=0, min_time_at_risk=0)
    assert t.labels.num_rows > 0 and t.y.all()   # tar_start=0: the index day is at risk (inputs stop before it)
    t = plp_task(nsaid_cdm, at, outcome_concepts=[192671], tar_start=1, min_time_at_risk=0)
    assert t.labels.num_rows == 0
    assert t.attrition["excluded: outcome before the time at risk"] == len(bleed)
    with pytest.raises(ValueError, match="tar_start"):
        plp_task(nsaid_cdm, ix, outcome_concepts=[192671], tar_start=-5)
    with pytest.raises(ValueError, match="outcome"):
        plp_task(nsaid_cdm, ix)


def test_plp_prior_observation_exclusion(nsaid_cdm, gi_task):
    t = plp_task(nsaid_cdm, 1, outcome_concepts=[192671], min_prior_observation=365, results_schema="results")
    assert t.labels.num_rows < gi_task.labels.num_rows
    assert t.attrition["excluded: too little observation before index"] > 0


def test_task_save_load(gi_task, tmp_path):
    back = Task.load(gi_task.save(tmp_path / "t"))
    assert back.labels.equals(gi_task.labels) and back.attrition == gi_task.attrition
    with pytest.raises(FileNotFoundError, match="labels.parquet"):
        Task.load(tmp_path)


def _tokens(rows):
    s, day, visit, tok = zip(*rows)
    t0 = np.datetime64("2020-01-01", "us")
    return pa.table({"subject_id": pa.array(s, pa.int64()),
                     "time": pa.array([t0 + np.timedelta64(d, "D") for d in day], pa.timestamp("us")),
                     "visit_id": pa.array(visit, pa.int64()), "token": pa.array(tok)})


def test_behrt_t1_next_visit_and_first_incidence():
    # person 1: 5 visits (days 0, 10, 20, 30, 40); j is drawn in {3, 4}; labels = diseases of visit j+1
    rows = [(1, 0, 1, "CALIBER/A"), (1, 10, 2, "CALIBER/B"), (1, 20, 3, "X/x"), (1, 30, 4, "CALIBER/A"),
            (1, 30, 4, "CALIBER/C"), (1, 40, 5, "CALIBER/B"), (1, 40, 5, "CALIBER/D"),
            (2, 0, 7, "CALIBER/A"), (2, 5, 8, "CALIBER/A"), (2, 9, 9, "X/y")]    # person 2: 3 visits, no j
    tok = _tokens(rows)
    for seed in range(6):
        t = behrt_task(tok, "T1", seed=seed)
        assert t.index["subject_id"].to_pylist() == [1] and t.diseases == ["CALIBER/A", "CALIBER/B", "CALIBER/C",
                                                                            "CALIBER/D"]
        day = (t.index["index_date"].to_numpy()[0] - np.datetime64("2020-01-01", "us")) // np.timedelta64(1, "D")
        assert day in (30, 40)                      # the cut is the start of visit 4 or 5 (j >= 3)
        assert t.Y.tolist() == ([[1, 0, 1, 0]] if day == 30 else [[0, 1, 0, 1]])
        f = behrt_task(tok, "T1", seed=seed, first_incidence=True)
        assert f.Y.tolist() == ([[0, 0, 1, 0]] if day == 30 else [[0, 0, 0, 1]])   # A / B were seen before


def test_behrt_t2_requires_follow_up_and_uses_the_window():
    rows = [(1, d, d, "CALIBER/A") for d in (0, 10, 20)] + [(1, 30, 30, "CALIBER/B"), (1, 100, 100, "CALIBER/C"),
                                                              (1, 300, 300, "CALIBER/D")]
    rows += [(2, d, 1000 + d, "CALIBER/A") for d in (0, 10, 20, 30, 40)]   # no 6 months of records after any cut
    t = behrt_task(_tokens(rows), "T2", seed=0)
    assert t.index["subject_id"].to_pylist() == [1]
    # cuts with 182 days of records after them: visit 4 (day 30: window [30, 212) holds B, C) or 5 (day 100: C)
    day = (t.index["index_date"].to_numpy()[0] - np.datetime64("2020-01-01", "us")) // np.timedelta64(1, "D")
    assert (day, t.Y.tolist()) in ((30, [[0, 1, 1, 0]]), (100, [[0, 0, 1, 0]]))
    assert {behrt_task(_tokens(rows), "T2", seed=s).Y.tolist()[0][1] for s in range(8)} == {0, 1}
    with pytest.raises(ValueError, match="follow-up"):
        behrt_task(_tokens(rows), "T3")
    with pytest.raises(ValueError, match="disease tokens"):
        behrt_task(_tokens(rows), "T1", disease_prefix="NOPE/")


def test_splits_disjoint_seeded_saved(tmp_path):
    subjects = np.repeat(np.arange(1000, 1300), 2)            # two rows per person
    a = split_persons(subjects, seed=3)
    assert (a == split_persons(subjects, seed=3)).all() and (a != split_persons(subjects, seed=4)).any()
    persons = {s: set(subjects[a == s]) for s in ("train", "val", "test")}
    assert not (persons["train"] & persons["val"]) and not (persons["train"] & persons["test"]) \
        and not (persons["val"] & persons["test"])
    assert [len(persons[s]) for s in ("train", "val", "test")] == [180, 60, 60]
    save_split(tmp_path / "s.parquet", subjects, a)
    assert (load_split(tmp_path / "s.parquet", subjects) == a).all()
    with pytest.raises(ValueError, match="no split"):
        load_split(tmp_path / "s.parquet", np.array([5]))
    with pytest.raises(ValueError, match="fractions"):
        split_persons(subjects, (0.5, 0.5, 0.5))


@pytest.mark.postgres
def test_plp_same_labels_on_postgresql_and_duckdb(pg_url, pg_schema, synthea_dir):
    from cdm_fixtures import load_postgres_cdm
    load_postgres_cdm(pg_url, pg_schema)
    subjects = [r[0] for r in duckdb.sql(f"SELECT DISTINCT person_id FROM read_csv('{synthea_dir}/PERSON.csv.gz') "
                                         "ORDER BY 1").fetchall()]
    ix = pa.table({"subject_id": pa.array(subjects, pa.int64()),
                   "index_date": pa.array([np.datetime64("2012-01-01", "us")] * len(subjects), pa.timestamp("us"))})
    kw = dict(outcome_concepts=[40481087], descendants=False, tar_end=2555, min_time_at_risk=0)
    duck = plp_task(synthea_dir, ix, **kw)
    pg = plp_task(pg_url, ix, cdm_schema=pg_schema, **kw)
    assert duck.labels.num_rows > 10 and 0 < duck.attrition["outcomes"] < duck.labels.num_rows
    assert pg.labels.equals(duck.labels) and pg.attrition == duck.attrition


def test_concurrent_task_saves_into_one_folder_leave_one_whole_task(tmp_path):
    """Runs saving different tasks into one folder at once take turns: labels.parquet and task.json end as one
    run's (each written atomically); before, one's labels could sit beside another's definition."""
    import datetime as dt
    import threading
    tasks = [Task(pa.table({"subject_id": pa.array(np.arange(n * 1000, dtype=np.int64)),
                            "index_date": pa.array([dt.datetime(2020, 1, 1)] * (n * 1000), pa.timestamp("us")),
                            "label": pa.array(np.full(n * 1000, n % 2, np.int8))}),
                  definition={"run": n}, attrition={"rows": n * 1000}) for n in range(1, 5)]
    errors: list[BaseException] = []

    def save(t: Task) -> None:
        try:
            for _ in range(10):
                t.save(tmp_path / "task")
        except BaseException as e:     # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=save, args=(t,)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = Task.load(tmp_path / "task")
    n = got.definition["run"]
    assert got.labels.num_rows == got.attrition["rows"] == n * 1000 and set(got.y.tolist()) == {n % 2}
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["labels.parquet", "task.json"]

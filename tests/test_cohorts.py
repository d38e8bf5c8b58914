"""Index dates in (cohort tables built in SQL, CSV, DataFrame, MEDS labels) and censoring in the extraction SQL."""
from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cdm_fixtures import load_postgres_cdm
from omop_behrt import EventDir
from omop_behrt.tasks import cohorts
from omop_behrt.adapters import omop


def test_first_occurrence_with_descendants(eunomia_rw):
    n = cohorts.first_occurrence_cohort(eunomia_rw, 1, [192671], results_schema="results")
    con = duckdb.connect(str(eunomia_rw), read_only=True)
    expected = con.execute("""
        SELECT person_id, MIN(condition_start_date) FROM condition_occurrence
        WHERE condition_concept_id IN (SELECT descendant_concept_id FROM concept_ancestor
                                       WHERE ancestor_concept_id = 192671) OR condition_concept_id = 192671
        GROUP BY 1 ORDER BY 1""").fetchall()
    got = con.execute("SELECT subject_id, cohort_start_date FROM results.cohort WHERE cohort_definition_id = 1 "
                      "ORDER BY 1").fetchall()
    assert n == len(expected) == 479 and got == expected
    # end = end of the observation period holding the start
    bad = con.execute("""SELECT COUNT(*) FROM results.cohort c WHERE cohort_end_date < cohort_start_date""").fetchall()
    assert bad[0][0] == 0
    con.close()
    # building it again replaces, never duplicates
    assert cohorts.first_occurrence_cohort(eunomia_rw, 1, [192671], results_schema="results") == 479
    ix = cohorts.CohortTable(eunomia_rw, "results").read(1)
    assert ix.num_rows == 479 and ix.schema == cohorts.INDEX_SCHEMA


def test_descendants_matter(eunomia_rw):
    """Ancestor 'Disorder of digestive system'-style roll-up: descendants add persons, no descendants add none."""
    con = duckdb.connect(str(eunomia_rw), read_only=True)
    parent, n_desc = con.execute("""
        SELECT ancestor_concept_id, COUNT(DISTINCT co.person_id) FROM concept_ancestor ca
        JOIN condition_occurrence co ON co.condition_concept_id = ca.descendant_concept_id
        WHERE ca.min_levels_of_separation = 1 GROUP BY 1 ORDER BY 2 DESC LIMIT 1""").fetchall()[0]
    direct = con.execute("SELECT COUNT(DISTINCT person_id) FROM condition_occurrence WHERE condition_concept_id = $c",
                         {"c": parent}).fetchall()[0][0]
    con.close()
    with_desc = cohorts.first_occurrence_cohort(eunomia_rw, 5, [parent], results_schema="results")
    without = cohorts.first_occurrence_cohort(eunomia_rw, 6, [parent], descendants=False, results_schema="results")
    assert without == direct and with_desc >= n_desc > without


def test_min_visits(eunomia_rw):
    n = cohorts.min_visits_cohort(eunomia_rw, 2, 2, results_schema="results")
    con = duckdb.connect(str(eunomia_rw), read_only=True)
    expected = con.execute("SELECT COUNT(*) FROM (SELECT person_id FROM visit_occurrence GROUP BY 1 "
                           "HAVING COUNT(*) >= 2)").fetchall()[0][0]
    assert n == expected
    second = con.execute("""SELECT person_id, visit_start_date FROM (SELECT person_id, visit_start_date,
        row_number() OVER (PARTITION BY person_id ORDER BY visit_start_date) n FROM visit_occurrence) WHERE n = 2
        ORDER BY 1""").fetchall()
    got = con.execute("SELECT subject_id, cohort_start_date FROM results.cohort WHERE cohort_definition_id = 2 "
                      "ORDER BY 1").fetchall()
    assert got == second
    con.close()
    days = cohorts.min_visits_cohort(eunomia_rw, 3, 10, visits="days", results_schema="results")
    assert 0 < days <= 2694


def test_refuses_cdm_schema(eunomia_rw):
    with pytest.raises(ValueError, match="refusing to write a cohort table into the CDM schema 'main'"):
        cohorts.first_occurrence_cohort(eunomia_rw, 1, [192671], results_schema="main")
    # Eunomia's own cohort table holds a header row as data: a clear error, not a broken write
    with pytest.raises(cohorts.SourceError, match=r"main.cohort is not a cohort table: no column cohort_definition_id"):
        cohorts.first_occurrence_cohort(eunomia_rw, 1, [192671], results_schema="main", allow_cdm_schema=True)
    assert cohorts.first_occurrence_cohort(eunomia_rw, 1, [192671], results_schema="main", allow_cdm_schema=True,
                                           cohort_table="gi_bleed") == 479


@pytest.mark.postgres
def test_cohorts_in_postgres(pg_url, pg_schema, synthea_dir, tmp_path):
    load_postgres_cdm(pg_url, pg_schema, "5.4")
    res = pg_schema + "_res"
    try:
        n = cohorts.min_visits_cohort(pg_url, 9, 5, cdm_schema=pg_schema, results_schema=res)
        con = duckdb.connect()
        expected = con.execute(f"SELECT COUNT(*) FROM (SELECT person_id FROM read_csv('{synthea_dir}/"
                               f"VISIT_OCCURRENCE.csv.gz') GROUP BY 1 HAVING COUNT(*) >= 5)").fetchall()[0][0]
        assert n == expected > 0
        # viral sinusitis (40481087); this CDM has no concept_ancestor: without descendants
        m = cohorts.first_occurrence_cohort(pg_url, 10, [40481087], descendants=False, cdm_schema=pg_schema,
                                            results_schema=res)
        exp = con.execute(f"SELECT COUNT(DISTINCT person_id) FROM read_csv('{synthea_dir}/"
                          f"CONDITION_OCCURRENCE.csv.gz') WHERE condition_concept_id = 40481087").fetchall()[0][0]
        assert m == exp > 0
        ix = cohorts.CohortTable(pg_url, res).read(10)
        assert ix.num_rows == m
        # a second writer of the cohort table waits for the first (advisory lock held by another transaction),
        # then writes: the cohort's rows once, not twice
        import threading

        import sqlalchemy as sa
        engine = sa.create_engine(pg_url)
        done = threading.Event()
        with engine.begin() as holder:
            holder.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                           {"k": f'omop_behrt.cohort "{res}"."cohort"'})
            t = threading.Thread(target=lambda: (cohorts.first_occurrence_cohort(
                pg_url, 10, [40481087], descendants=False, cdm_schema=pg_schema, results_schema=res), done.set()))
            t.start()
            assert not done.wait(1.5)            # blocked while the other transaction holds the lock
        t.join(30)
        engine.dispose()
        assert done.is_set() and cohorts.CohortTable(pg_url, res).read(10).num_rows == m
    finally:
        from cdm_fixtures import drop_postgres_schema
        drop_postgres_schema(pg_url, res)


def test_index_dates_from_csv_frame_meds(tmp_path):
    (tmp_path / "ix.csv").write_text("subject_id,index_date\n1,2010-01-02\n2,2011-05-06\n")
    t = cohorts.index_dates_from_csv(tmp_path / "ix.csv", cohort_definition_id=4)
    assert t.schema == cohorts.INDEX_SCHEMA and t["index_date"][1].as_py() == dt.datetime(2011, 5, 6)
    assert t["cohort_definition_id"].to_pylist() == [4, 4]
    f = cohorts.index_dates_from_frame(pd.DataFrame({"subject_id": [3], "index_date": pd.to_datetime(["2012-01-01"])}))
    assert f["subject_id"].to_pylist() == [3]
    pq.write_table(pa.table({"subject_id": pa.array([7], pa.int64()),
                             "prediction_time": pa.array([dt.datetime(2020, 1, 1, 12)], pa.timestamp("us")),
                             "boolean_value": [True]}), tmp_path / "labels.parquet")
    m = cohorts.index_dates_from_meds_labels(tmp_path / "labels.parquet")
    assert m["index_date"][0].as_py() == dt.datetime(2020, 1, 1, 12)


def test_index_dates_csv_as_spreadsheets_save_it(tmp_path):
    """Index dates saved by a spreadsheet (';' where the comma is the decimal separator, or tab separated, a byte
    order mark, CRLF, quoted headers) read as the plain CSV; before, ';' gave "column 'subject_id' is missing"."""
    want = cohorts.index_dates_from_csv(_write(tmp_path / "plain.csv", "subject_id,index_date\n1,2010-01-02\n"
                                                                       "2,2011-05-06 13:00:00\n"), 4)
    for sep in (";", "\t", "|"):
        text = f'\ufeff"subject_id"{sep}"index_date"\r\n1{sep}2010-01-02\r\n2{sep}2011-05-06 13:00:00\r\n'
        assert cohorts.index_dates_from_csv(_write(tmp_path / "ix.csv", text), 4).equals(want), repr(sep)
    assert want["index_date"].to_pylist() == [dt.datetime(2010, 1, 2), dt.datetime(2011, 5, 6, 13)]


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_index_dates_bad_input(tmp_path):
    (tmp_path / "bad.csv").write_text("subject_id,index_date\n1,2010-01-02\n2,yesterday\n")
    with pytest.raises(ValueError, match=r"bad.csv: row 3: index_date 'yesterday' is not a date"):
        cohorts.index_dates_from_csv(tmp_path / "bad.csv")
    (tmp_path / "nocol.csv").write_text("person,index_date\n1,2010-01-02\n")
    with pytest.raises(ValueError, match=r"column 'subject_id' is missing"):
        cohorts.index_dates_from_csv(tmp_path / "nocol.csv")
    with pytest.raises(ValueError, match="subject_id must be integers"):
        cohorts.index_dates_from_frame(pd.DataFrame({"subject_id": ["a"], "index_date": ["2010-01-01"]}))


def test_extraction_censors_at_index_date(eunomia_rw, tmp_path):
    """Events on/after the index date never leave the database; planting later events changes nothing."""
    cohorts.first_occurrence_cohort(eunomia_rw, 1, [192671], results_schema="results")
    ix = cohorts.CohortTable(eunomia_rw, "results").read(1)
    omop.extract(eunomia_rw, tmp_path / "a", options=omop.ExtractOptions(index_dates=ix), progress=False)
    a = EventDir.open(tmp_path / "a").read_events()
    con = duckdb.connect()
    con.register("ix", ix)
    con.register("a", a)
    assert con.execute("SELECT COUNT(*) FROM a JOIN ix USING (subject_id) WHERE a.time >= ix.index_date"
                       ).fetchall()[0][0] == 0
    assert set(a["subject_id"].to_pylist()) <= set(ix["subject_id"].to_pylist())
    # plant events after every index date and on the index date itself
    db = duckdb.connect(str(eunomia_rw))
    db.register("ix", ix)
    db.execute("""INSERT INTO condition_occurrence (CONDITION_OCCURRENCE_ID, PERSON_ID, CONDITION_CONCEPT_ID,
                  CONDITION_START_DATE, CONDITION_START_DATETIME, CONDITION_TYPE_CONCEPT_ID, VISIT_OCCURRENCE_ID,
                  CONDITION_SOURCE_VALUE, CONDITION_SOURCE_CONCEPT_ID)
                  SELECT 90000000 + row_number() OVER (), subject_id, 4112343, CAST(index_date AS DATE) + k,
                         CAST(index_date AS DATE) + k, 32020, NULL, '195662009', 4112343
                  FROM ix CROSS JOIN (VALUES (0), (1), (400)) v(k)""")
    db.close()
    omop.extract(eunomia_rw, tmp_path / "b", options=omop.ExtractOptions(index_dates=ix), progress=False)
    b = EventDir.open(tmp_path / "b").read_events()
    keys = [(k, "ascending") for k in ("subject_id", "time", "code", "visit_id", "domain")]
    assert b.sort_by(keys).equals(a.sort_by(keys))
    # inclusive: same-day events are in, later ones still out
    omop.extract(eunomia_rw, tmp_path / "c", options=omop.ExtractOptions(index_dates=ix, inclusive=True),
                 progress=False)
    c = EventDir.open(tmp_path / "c").read_events()
    con.register("c", c)
    assert con.execute("SELECT COUNT(*) FROM c JOIN ix USING (subject_id) WHERE CAST(c.time AS DATE) > "
                       "CAST(ix.index_date AS DATE)").fetchall()[0][0] == 0
    assert c.num_rows >= a.num_rows + ix.num_rows
    assert pc.sum(pc.equal(c["code"], "SNOMED/195662009")).as_py() > pc.sum(
        pc.equal(a["code"], "SNOMED/195662009")).as_py()


def test_a_task_labels_file_gives_index_dates_and_a_file_without_times_is_refused(tmp_path):
    """`extract --index-dates task/labels.parquet`: a task's labels (index_date) read like MEDS labels."""
    pq.write_table(pa.table({"subject_id": pa.array([5, 6], pa.int64()),
                             "index_date": pa.array([dt.datetime(2019, 3, 1), dt.datetime(2018, 1, 2)],
                                                    pa.timestamp("us")),
                             "label": pa.array([1, 0], pa.int8())}), tmp_path / "labels.parquet")
    t = cohorts.index_dates_from_meds_labels(tmp_path / "labels.parquet")
    assert t["subject_id"].to_pylist() == [5, 6] and t["index_date"][1].as_py() == dt.datetime(2018, 1, 2)
    pq.write_table(pa.table({"subject_id": pa.array([5], pa.int64()), "label": [1]}), tmp_path / "nolabel.parquet")
    with pytest.raises(ValueError, match=r"nolabel.parquet: MEDS label column 'prediction_time' is missing \(or a "
                                         r"task's index_date\); columns present: \['subject_id', 'label'\]"):
        cohorts.index_dates_from_meds_labels(tmp_path / "nolabel.parquet")

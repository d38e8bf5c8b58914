"""Fast tests that kill mutants of omop_behrt/tasks/cohorts.py which test_cohorts.py let survive (bench/mutation.sh).

The index-date readers (the cut every censored stage takes) are pinned value by value: dates as strings, large
strings, dates and timestamps; a cohort_definition_id column kept per row; every refusal says exactly which file,
row and column. The cohort table lookup and the occurrence SQL are checked on a small DuckDB database built here.
Expected values are written by hand, never computed with the module under test.
"""
from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omop_behrt.tasks import cohorts

D = dt.datetime


def _rows(t: pa.Table) -> list[tuple]:
    assert t.schema == cohorts.INDEX_SCHEMA
    return list(zip(*(t[c].to_pylist() for c in t.column_names)))


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def test_frame_dates_of_every_type_and_the_cohort_column():
    got = cohorts.index_dates_from_frame(pa.table({"subject_id": pa.array([3, 1], pa.int32()),
                                                   "index_date": ["2012-02-29", "1999-12-31"]}))
    assert _rows(got) == [(0, 3, D(2012, 2, 29)), (0, 1, D(1999, 12, 31))]
    got = cohorts.index_dates_from_frame(pa.table({"subject_id": [5], "index_date": pa.array(["2001-07-04"],
                                                                                           pa.large_string())}), 9)
    assert _rows(got) == [(9, 5, D(2001, 7, 4))]
    got = cohorts.index_dates_from_frame(pa.table({"subject_id": [1, 2], "index_date": [dt.date(2020, 5, 1)] * 2,
                                                   "cohort_definition_id": pa.array([7, 8], pa.int16())}), 4)
    assert _rows(got) == [(7, 1, D(2020, 5, 1)), (8, 2, D(2020, 5, 1))]
    got = cohorts.index_dates_from_frame(pa.table({"subject_id": [2], "index_date": pa.array(
        [D(2020, 5, 1, 13, 30)], pa.timestamp("ms"))}))
    assert _rows(got) == [(0, 2, D(2020, 5, 1, 13, 30))]


def test_frame_refusals_name_the_column_and_the_problem():
    frame = cohorts.index_dates_from_frame
    assert _error(frame, pa.table({"subject_id": [1], "when": [1]})) == \
        "index dates: column 'index_date' is missing; columns present: ['subject_id', 'when']"
    assert _error(frame, pa.table({"id": [1], "index_date": [1]})) == \
        "index dates: column 'subject_id' is missing; columns present: ['id', 'index_date']"
    assert _error(frame, pa.table({"subject_id": [1], "index_date": ["2010-13-01"]})).startswith(
        "index dates: index_date must be dates as YYYY-MM-DD: ")
    assert _error(frame, pa.table({"subject_id": [1], "index_date": pa.array(["01/02/2010"], pa.large_string())})
                  ).startswith("index dates: index_date must be dates as YYYY-MM-DD: ")
    assert _error(frame, pa.table({"subject_id": [1], "index_date": [True]})).startswith(
        "index dates: index_date must be a date or timestamp: ")
    assert _error(frame, pa.table({"subject_id": [1.5], "index_date": [dt.date(2010, 1, 1)]})).startswith(
        "index dates: subject_id must be integers: ")
    assert _error(frame, pa.table({"subject_id": [1, None, None], "index_date": [dt.date(2010, 1, 1)] * 3})) == \
        "index dates: column 'subject_id' has 2 empty values"
    assert _error(frame, pa.table({"subject_id": [1, 2], "index_date": [dt.date(2010, 1, 1), None]})) == \
        "index dates: column 'index_date' has 1 empty values"


def test_csv_dates_timestamps_cohort_ids_and_refusals(tmp_path):
    p = tmp_path / "ix.csv"
    p.write_text("subject_id,index_date,cohort_definition_id\n4,2010-01-02,3\n5,2011-05-06,6\n")
    assert _rows(cohorts.index_dates_from_csv(p, 1)) == [(3, 4, D(2010, 1, 2)), (6, 5, D(2011, 5, 6))]
    p.write_text("subject_id,index_date\n4,2010-01-02 10:30:00\n5,2011-05-06T00:00:01\n")
    assert _rows(cohorts.index_dates_from_csv(p, 2)) == [(2, 4, D(2010, 1, 2, 10, 30)), (2, 5, D(2011, 5, 6, 0, 0, 1))]
    assert _rows(cohorts.index_dates_from_csv(p)) == [(0, 4, D(2010, 1, 2, 10, 30)), (0, 5, D(2011, 5, 6, 0, 0, 1))]
    p.write_text("subject_id,index_date\n4,2010-01-02\n5,\n")
    assert _error(cohorts.index_dates_from_csv, p) == f"{p}: row 3: index_date '' is not a date (expected YYYY-MM-DD)"
    p.write_text("subject_id,index_date\n4,2010-01-02\n5,2010-01-03\n6,soon\n")
    assert _error(cohorts.index_dates_from_csv, p) == \
        f"{p}: row 4: index_date 'soon' is not a date (expected YYYY-MM-DD)"
    p.write_text("subject_id,day\n4,2010-01-02\n")
    assert _error(cohorts.index_dates_from_csv, p) == \
        f"{p}: column 'index_date' is missing; header has ['subject_id', 'day']"
    p.write_text("person,index_date\n4,2010-01-02\n")
    assert _error(cohorts.index_dates_from_csv, p) == \
        f"{p}: column 'subject_id' is missing; header has ['person', 'index_date']"
    assert _error(cohorts.index_dates_from_csv, tmp_path / "none.csv").startswith(
        f"{tmp_path / 'none.csv'}: cannot read index dates: ")
    p.write_text("subject_id,index_date\nx,2010-01-02\n")
    assert _error(cohorts.index_dates_from_csv, p).startswith(f"{p}: subject_id must be integers: ")


def test_meds_labels_prefer_prediction_time_and_name_the_file(tmp_path):
    both = tmp_path / "both.parquet"
    pq.write_table(pa.table({"subject_id": pa.array([1], pa.int64()),
                             "prediction_time": pa.array([D(2020, 1, 2, 3)], pa.timestamp("us")),
                             "index_date": pa.array([D(1990, 1, 1)], pa.timestamp("us"))}), both)
    assert _rows(cohorts.index_dates_from_meds_labels(both, 5)) == [(5, 1, D(2020, 1, 2, 3))]
    folder = tmp_path / "labels"
    folder.mkdir()
    for i, day in enumerate((3, 4)):
        pq.write_table(pa.table({"subject_id": pa.array([10 + i], pa.int64()),
                                 "prediction_time": pa.array([D(2021, 1, day)], pa.timestamp("ms"))}),
                       folder / f"part-{i}.parquet")
    assert sorted(_rows(cohorts.index_dates_from_meds_labels(folder))) == [(0, 10, D(2021, 1, 3)),
                                                                           (0, 11, D(2021, 1, 4))]
    bad = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()),
                             "prediction_time": pa.array([D(2020, 1, 1), None], pa.timestamp("us"))}), bad)
    assert _error(cohorts.index_dates_from_meds_labels, bad) == f"{bad}: column 'index_date' has 1 empty values"
    nosub = tmp_path / "nosub.parquet"
    pq.write_table(pa.table({"person": [1], "prediction_time": pa.array([D(2020, 1, 1)], pa.timestamp("us"))}), nosub)
    assert _error(cohorts.index_dates_from_meds_labels, nosub) == (
        f"{nosub}: MEDS label column 'subject_id' is missing (or a task's index_date); columns present: "
        "['person', 'prediction_time']")


@pytest.fixture
def tiny_cdm(tmp_path):
    """A DuckDB CDM with two condition rows, one drug row and no procedure table; a results.cohort table."""
    path = tmp_path / "tiny.duckdb"
    con = duckdb.connect(str(path))
    con.execute("""
        CREATE TABLE person (person_id BIGINT, year_of_birth INT, gender_concept_id INT);
        CREATE TABLE condition_occurrence (condition_occurrence_id BIGINT, person_id BIGINT,
                                           condition_concept_id BIGINT, condition_start_date DATE);
        INSERT INTO condition_occurrence VALUES (1, 10, 111, DATE '2001-01-01'), (2, 11, 222, DATE '2002-02-02');
        CREATE TABLE drug_exposure (drug_exposure_id BIGINT, person_id BIGINT, drug_concept_id BIGINT,
                                    drug_exposure_start_date DATE);
        INSERT INTO drug_exposure VALUES (1, 12, 111, DATE '2003-03-03');
        CREATE SCHEMA results;
        CREATE TABLE results.cohort (cohort_definition_id BIGINT, subject_id BIGINT, cohort_start_date DATE,
                                     cohort_end_date DATE);
        INSERT INTO results.cohort VALUES (1, 12, DATE '2003-03-03', DATE '2003-03-03'),
                                          (1, 10, DATE '2001-01-01', DATE '2001-02-01'),
                                          (2, 11, DATE '2002-02-02', DATE '2002-02-02');
        CREATE TABLE results.other (cohort_definition_id BIGINT, subject_id BIGINT);
    """)
    con.close()
    return path


def test_cohort_table_reads_one_cohort_in_order_and_says_what_is_missing(tiny_cdm):
    assert _rows(cohorts.CohortTable(tiny_cdm, "results").read(1)) == [(1, 10, D(2001, 1, 1)),
                                                                        (1, 12, D(2003, 3, 3))]
    with pytest.raises(cohorts.SourceError) as e:
        cohorts.CohortTable(tiny_cdm, "results").read(3)
    assert str(e.value) == 'cohort 3 has no rows in "results"."cohort"'
    with pytest.raises(cohorts.SourceError) as e:
        cohorts.CohortTable(tiny_cdm, "results", "other").read(1)
    assert str(e.value) == ("results.other is not a cohort table: no column cohort_start_date "
                            "(columns: cohort_definition_id, subject_id)")
    with pytest.raises(cohorts.SourceError) as e:
        cohorts.CohortTable(tiny_cdm, "nowhere", "mine").read(1)
    msg = str(e.value)
    assert msg.startswith("cohort table nowhere.mine not found in ") and " (no schema nowhere); create it with " \
        "`omop-behrt cohort first-occurrence|min-visits --source ... --cohort-id N --results-schema nowhere " \
        "--cohort-table mine` (in Python: cohorts.first_occurrence_cohort)" in msg
    with pytest.raises(cohorts.SourceError) as e:
        cohorts.CohortTable(tiny_cdm, "results", "absent").read(1)
    assert str(e.value) == (
        f"cohort table results.absent not found in {tiny_cdm}; create it with `omop-behrt cohort "
        "first-occurrence|min-visits --source ... --cohort-id N --cohort-table absent` (in Python: "
        "cohorts.first_occurrence_cohort), or name the schema and table holding it (--results-schema, --cohort-table)")
    with pytest.raises(cohorts.SourceError) as e:
        cohorts.CohortTable(tiny_cdm, "nowhere").read(1)
    assert "--cohort-id N --results-schema nowhere` (in Python" in str(e.value)


def test_occurrences_sql_covers_the_tables_present_and_filters_concepts(tiny_cdm):
    from omop_behrt.db.cdm import OmopCdm
    from omop_behrt.db.database import Database
    cdm = OmopCdm(Database.connect(tiny_cdm, read_only=True))
    try:
        def run(sql: str) -> list[tuple]:
            return sorted(cdm.db.duck.execute(sql).fetchall())
        assert run(cohorts.occurrences_sql(cdm)) == [(10, dt.date(2001, 1, 1)), (11, dt.date(2002, 2, 2)),
                                                     (12, dt.date(2003, 3, 3))]
        assert run(cohorts.occurrences_sql(cdm, ["drug", "procedure"])) == [(12, dt.date(2003, 3, 3))]
        assert run(cohorts.occurrences_sql(cdm, ["procedure", "drug"])) == [(12, dt.date(2003, 3, 3))]
        assert run(cohorts.occurrences_sql(cdm, None, "SELECT 111")) == [(10, dt.date(2001, 1, 1)),
                                                                         (12, dt.date(2003, 3, 3))]
        with pytest.raises(ValueError) as e:
            cohorts.occurrences_sql(cdm, ["labs"])
        assert str(e.value) == ("unknown domain 'labs'; expected some of ['condition', 'drug', 'procedure', "
                                "'measurement', 'observation', 'device']")
        with pytest.raises(cohorts.SourceError) as e:
            cohorts.occurrences_sql(cdm, ["procedure", "device"])
        assert str(e.value) == "none of the domain tables ['procedure', 'device'] is in the CDM"
    finally:
        cdm.db.close()


def test_a_bad_results_schema_name_is_refused_by_name(tiny_cdm):
    assert _error(cohorts.min_visits_cohort, tiny_cdm, 1, 2, results_schema="bad-name") == (
        "invalid results schema name 'bad-name': expected letters, digits, '_' or '$', starting with a letter or "
        "'_', at most 63 characters")


def test_builders_keep_their_arguments(eunomia_rw):
    """min_visits=1 is allowed (>= 1 visit), the CDM schema is writable when allowed, domains restrict the search,
    a bad results schema is named as a schema name; the counts are worked out here in plain SQL."""
    con = duckdb.connect(str(eunomia_rw), read_only=True)
    with_visit = con.execute("SELECT COUNT(DISTINCT person_id) FROM visit_occurrence").fetchone()[0]
    con.close()
    assert cohorts.min_visits_cohort(eunomia_rw, 2, 1, results_schema="results") == with_visit > 0
    assert cohorts.min_visits_cohort(eunomia_rw, 3, 1, results_schema="main", cohort_table="mine",
                                     allow_cdm_schema=True) == with_visit
    # GI haemorrhage (192671) is a condition: searched among drugs only it is nobody's
    assert cohorts.first_occurrence_cohort(eunomia_rw, 4, [192671], results_schema="results") == 479
    assert cohorts.first_occurrence_cohort(eunomia_rw, 5, [192671], domains=["drug"], results_schema="results") == 0
    msg = _error(cohorts.first_occurrence_cohort, eunomia_rw, 6, [192671], results_schema='res"ults')
    assert "schema name" in msg and 'res"ults' in msg


def test_from_atlas_keeps_the_name_and_id():
    from pathlib import Path
    nsaid = Path(cohorts.__file__).parents[1] / "studies" / "nsaid_new_users.json"
    c = cohorts.from_atlas(nsaid, cohort_id=12, name="new NSAID users")
    assert (c.cohort_id, c.name) == (12, "new NSAID users")

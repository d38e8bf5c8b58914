"""Spark as an engine, a source and a sink: the extraction SQL run by Spark SQL (local mode) equals DuckDB's.

Eunomia and the Synthea 1k CDM are loaded into Spark databases through Parquet; ``omop.extract`` over a
SparkDatabase (the executors write the shards) must give the events, persons, periods and quarantine of the
DuckDB extraction of the same CDM, sorted and compared column by column. ``embed_spark`` must give the vectors
of ``embed_cohort(..., exact=True)``. In CI (CI=true) a missing pyspark or Java is a failure; elsewhere a skip.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from omop_behrt.adapters import omop
from omop_behrt.events import EventDir, validate_events, validate_persons
from conftest import CDM_TABLES, DATA

# the Spark session and Eunomia's tables in it are session fixtures of conftest.py


@pytest.fixture(scope="module")
def synthea_duckdb(tmp_path_factory) -> Path:
    from cdm_fixtures import build_duckdb_cdm
    return build_duckdb_cdm(tmp_path_factory.mktemp("synthea") / "synthea.duckdb", "5.4", schema="cdm")


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in table.column_names])


def assert_same_tables(got: pa.Table, want: pa.Table, what: str) -> None:
    """Same schema, same rows in any order: both sorted by every column, then compared column by column."""
    assert got.schema == want.schema, f"{what}: schema {got.schema} != {want.schema}"
    assert got.num_rows == want.num_rows, f"{what}: {got.num_rows} rows, DuckDB {want.num_rows}"
    got, want = _sorted(got), _sorted(want)
    for name in want.column_names:
        a, b = got[name].combine_chunks(), want[name].combine_chunks()
        if not a.equals(b):
            diff = pc.invert(pc.fill_null(pc.equal(a, b), False))
            i = int(np.flatnonzero(diff.to_numpy(zero_copy_only=False))[0]) if pc.any(diff).as_py() else 0
            pytest.fail(f"{what}: column {name} differs, first at sorted row {i}: {a[i]} vs DuckDB {b[i]}")


def assert_same_extraction(spark_dir: EventDir, duck_dir: EventDir, spark_summary, duck_summary) -> None:
    assert_same_tables(spark_dir.read_events(), duck_dir.read_events(), "events")
    assert_same_tables(spark_dir.persons(), duck_dir.persons(), "persons")
    assert spark_dir.persons()["subject_id"].to_pylist() == sorted(spark_dir.persons()["subject_id"].to_pylist())
    assert_same_tables(spark_dir.observation_periods(), duck_dir.observation_periods(), "observation periods")
    assert_same_tables(spark_dir.quarantine(), duck_dir.quarantine(), "quarantine")
    for key in ("persons", "events_in", "events_out", "quarantined", "events_by_domain", "quarantined_by_reason",
                "notes", "checks", "skipped", "visits", "rebuilt_visits"):
        assert getattr(spark_summary, key) == getattr(duck_summary, key), key
    s = spark_summary
    assert s.events_in == s.events_out + s.quarantined          # counts in = out + quarantined
    validate_events(spark_dir.read_events())
    validate_persons(spark_dir.persons())
    codes = duck_dir.descriptions()
    assert_same_tables(spark_dir.descriptions(), codes, "code descriptions")


def assert_partitioned_by_person(out: EventDir) -> None:
    """Each person's events sit in shards of one partition (the executors' hash partitioning)."""
    seen: dict[int, str] = {}
    files = out.event_files()
    assert files and all("-p" in f.name for f in files)
    for f in files:
        part = f.name.split("-p")[1].split("-")[0]
        for s in pc.unique(pq.read_table(f, columns=["subject_id"])["subject_id"]).to_pylist():
            assert seen.setdefault(s, part) == part, f"person {s} in partitions {seen[s]} and {part}"


def test_eunomia_through_spark_equals_duckdb(spark, eunomia_spark, eunomia_events, tmp_path):
    """Eunomia (5.3, UPPER-CASE columns, text-typed values) through Spark SQL: DuckDB's extraction exactly, and with
    ``meds_out`` (the executors write event shards; MEDS is sorted from them) the same MEDS dataset as the DuckDB
    extraction's to_meds, row for row, valid under the official schemas."""
    from omop_behrt.db.spark import SparkDatabase
    db = SparkDatabase(spark, eunomia_spark)
    summary = omop.extract(db, tmp_path / "ev", progress=False, meds_out=tmp_path / "m")
    out = EventDir.open(tmp_path / "ev")
    duck_summary = omop.ExtractSummary(**{k: v for k, v in eunomia_events.manifest["summary"].items()})
    assert_same_extraction(out, eunomia_events, summary, duck_summary)
    assert_partitioned_by_person(out)
    assert summary.events_out == 217_014 and summary.persons == 2_694
    assert not (out.path / ".spark").exists()
    if importlib.util.find_spec("meds") is None:
        pytest.skip("the `meds` package (official MEDS schemas) is not installed: the MEDS half is not checked")
    from omop_behrt.adapters.meds import to_meds
    from test_meds_validation import validate_meds_dataset
    from test_meds_writes import _leftovers, assert_same_rows
    to_meds(eunomia_events, tmp_path / "want")
    validate_meds_dataset(tmp_path / "m")
    assert assert_same_rows(tmp_path / "m", tmp_path / "want") == summary.meds["rows"] == 217_014 + 3 * 2_694
    assert _leftovers(tmp_path / "m") == []


def test_messy_cdm_through_spark_equals_duckdb(spark, synthea_duckdb, tmp_path):
    """The Synthea 1k CDM (5.4, official DDL types, deaths, devices) made messy as a site's export is: text ids and
    dates, sentinel years, duplicates, null ids, events after death, a missing table. Through Spark SQL it gives
    DuckDB's extraction: the same events, and the same rows quarantined for the same reasons."""
    import duckdb
    from cdm_fixtures import corruption
    from omop_behrt.db.spark import SparkDatabase, load_duckdb_cdm
    db = tmp_path / "messy.duckdb"
    shutil.copy(synthea_duckdb, db)
    con = duckdb.connect(str(db))
    for stmt in corruption('"cdm"') + ["DROP TABLE cdm.observation"]:
        con.execute(stmt)
    con.close()
    load_duckdb_cdm(spark, db, "messy", tmp_path / "parquet", schema="cdm", tables=CDM_TABLES)
    got = omop.extract(SparkDatabase(spark, "messy"), tmp_path / "spark", progress=False)
    want = omop.extract(db, tmp_path / "duck", cdm_schema="cdm", progress=False)
    assert_same_extraction(EventDir.open(tmp_path / "spark"), EventDir.open(tmp_path / "duck"), got, want)
    assert got.skipped == {"observation": "table observation absent"}
    assert "death" in got.events_by_domain and "device" in got.events_by_domain
    reasons = " ".join(got.quarantined_by_reason)
    for what in ("birth date outside", "after death", "duplicate", "person_id"):
        assert what in reasons, what
    assert got.quarantined >= 10 and got.notes["measurement: measurement_datetime ignored (its date is not "
                                                "measurement_date): measurement_date used"] == 5


def test_cli_spark_url_and_filters(spark, eunomia_parquet, eunomia_db, eunomia_events, tmp_path, capsys):
    """``extract --source spark://local[2]?database=NAME&parquet=DIR`` registers the Parquet tables, uses the
    running session (not stopped), and applies the filters in Spark SQL as DuckDB does: bound person ids, and
    index dates (censoring: two bound arrays zipped, events strictly before each person's date)."""
    from omop_behrt.cli.main import main
    from omop_behrt.db.database import Database
    url = f"spark://local[2]?database=eunomia_url&parquet={eunomia_parquet}"
    db = Database.connect(url)
    assert db.dialect == "spark" and db.default_schema == "eunomia_url" and "person" in db.tables("eunomia_url")
    persons = eunomia_events.persons()["subject_id"].to_pylist()[:8]
    ids = persons[:6] + [987654321]
    index = tmp_path / "index.csv"
    index.write_text("subject_id,index_date\n" + "".join(f"{s},{1960 + 8 * i}-06-15\n" for i, s in enumerate(persons)))
    args = ["--domains", "visit,condition", "--quiet", "--person-ids", ",".join(map(str, ids)), "--index-dates",
            str(index)]
    assert main(["extract", "--source", url, "--out", str(tmp_path / "spark"), *args]) == 0
    assert "1 of the --person-ids are not in the person table" in capsys.readouterr().out
    db.close()
    assert not spark.sparkContext._jsc.sc().isStopped()
    assert main(["extract", "--source", str(eunomia_db), "--out", str(tmp_path / "duck"), *args]) == 0
    got, want = EventDir.open(tmp_path / "spark"), EventDir.open(tmp_path / "duck")
    assert 0 < want.read_events().num_rows < eunomia_events.read_events().num_rows
    assert_same_tables(got.read_events(), want.read_events(), "filtered, censored events")
    assert_same_tables(got.persons(), want.persons(), "filtered persons")
    assert got.persons().num_rows == 6


def test_embed_spark_equals_embed_cohort(spark, eunomia_events, tiny_model, tmp_path):
    """Vectors computed by executors over person partitions equal one exact ``embed_cohort`` run."""
    from omop_behrt.vectors.embed import embed_cohort
    from omop_behrt.vectors.spark import embed_spark
    persons = eunomia_events.persons().slice(0, 60)
    index = pa.table({"cohort_definition_id": pa.array([7] * persons.num_rows, pa.int64()),
                      "subject_id": persons["subject_id"],
                      "index_date": pa.array(np.datetime64("2010-01-01", "D").repeat(persons.num_rows))})
    df = spark.createDataFrame(index)
    got = embed_spark(df, eunomia_events.path, tiny_model).toArrow()
    ref = embed_cohort(tiny_model, eunomia_events, index, progress=False, device="cpu", exact=True)
    keep = ref.has_history
    assert got.num_rows == int(keep.sum()) > 0
    got = got.sort_by("subject_id")
    order = np.argsort(index["subject_id"].to_numpy()[keep], kind="stable")
    want_ids = index["subject_id"].to_numpy()[keep][order]
    assert got["subject_id"].to_numpy().tolist() == want_ids.tolist()
    vectors = np.stack(got["embedding"].to_numpy(zero_copy_only=False))
    assert np.abs(vectors - ref.vectors[keep][order]).max() <= 1e-5
    from omop_behrt.vectors.embed import model_checksum
    assert set(got["model_id"].to_pylist()) == {model_checksum(tiny_model)}
    assert got["index_date"].to_pylist()[0].isoformat() == "2010-01-01"
    assert got.schema.field("embedding").type.value_type == pa.float32()
    # an entry without a date (or with text where a date belongs) is named on the driver, before any executor runs
    bad = spark.createDataFrame([(7, int(persons["subject_id"][0].as_py()), None), (7, 1, "2010-13-45")],
                                "cohort_definition_id long, subject_id long, index_date string")
    with pytest.raises(ValueError, match="entries without a cohort_definition_id, subject_id or index_date"):
        embed_spark(bad, eunomia_events.path, tiny_model)


def test_cohorts_on_spark_equal_duckdb(spark, eunomia_parquet, eunomia_db, tmp_path, capsys):
    """The cohort builders write the same cohort table in Spark (a Parquet table: no row deletes, so a rebuild
    rewrites the table as its other cohorts' rows plus the new ones) as in DuckDB; a rebuild replaces, never
    duplicates, and leaves the other cohorts' rows. Through the CLI on a ``spark://`` URL too."""
    import duckdb

    from omop_behrt.cli.main import main
    from omop_behrt.db.spark import SparkDatabase
    from omop_behrt.tasks import cohorts
    db = SparkDatabase(spark, "eunomia")
    assert cohorts.first_occurrence_cohort(db, 1, [192671], results_schema="spark_results", descendants=False) == 479
    assert cohorts.min_visits_cohort(db, 2, 2, results_schema="spark_results", visits="days") > 0
    assert cohorts.first_occurrence_cohort(db, 1, [192671], results_schema="spark_results", descendants=False) == 479
    url = f"spark://local[2]?database=eunomia&parquet={eunomia_parquet}"
    assert main(["cohort", "first-occurrence", "--source", url, "--cohort-id", "3", "--concepts", "192671,40481087",
                 "--no-descendants", "--results-schema", "spark_results"]) == 0
    got = sorted(tuple(r) for r in spark.sql(
        "SELECT cohort_definition_id, subject_id, cohort_start_date, cohort_end_date FROM spark_results.cohort"
    ).collect())
    copy = tmp_path / "c.duckdb"
    shutil.copy(eunomia_db, copy)
    cohorts.first_occurrence_cohort(copy, 1, [192671], results_schema="results", descendants=False)
    cohorts.min_visits_cohort(copy, 2, 2, results_schema="results", visits="days")
    cohorts.first_occurrence_cohort(copy, 3, [192671, 40481087], results_schema="results", descendants=False)
    con = duckdb.connect(str(copy), read_only=True)
    want = sorted(con.execute("SELECT cohort_definition_id, subject_id, cohort_start_date, cohort_end_date "
                              "FROM results.cohort").fetchall())
    # independently: cohort 1 is each person's first 192671 condition, in plain SQL
    first = con.execute("SELECT person_id, MIN(condition_start_date) FROM condition_occurrence "
                        "WHERE condition_concept_id = 192671 GROUP BY 1 ORDER BY 1").fetchall()
    con.close()
    assert got == want
    assert [(r[1], r[2]) for r in got if r[0] == 1] == first
    assert {r[0] for r in got} == {1, 2, 3} and len(got) == len(set(got))


def test_atlas_cohorts_on_spark_equal_duckdb(spark, eunomia_db, tmp_path, capsys, monkeypatch):
    """ATLAS definitions generate in a plain Spark (no Delta Lake): sqlrender's Spark SQL, its working tables as
    Parquet tables of the results database, the cohort table rewritten rather than row-deleted. Four Phenotype
    Library definitions (one with an inclusion rule, one with many events per person, one whose SQL makes a
    session view of a CTE) give DuckDB's rows, counts and attrition; a re-run replaces, never duplicates; no
    working table, view or CDM table is left or added, also after a failure; the CLI on ``spark://`` gives the
    same."""
    import duckdb

    from omop_behrt.cli.main import main
    from omop_behrt.db.spark import SparkDatabase, load_duckdb_cdm
    from omop_behrt.tasks import atlas
    load_duckdb_cdm(spark, eunomia_db, "eunomia_atlas", tmp_path / "parquet", tables=CDM_TABLES + ["concept_ancestor"])
    cdm_tables = {r.tableName for r in spark.sql("SHOW TABLES IN eunomia_atlas").collect()}
    picked = [c for c in atlas.read_cohort_set(DATA / "ohdsi_phenotypes" / "cohorts.csv")
              if c.cohort_id in (27, 77, 327, 1035)]
    db = SparkDatabase(spark, "eunomia_atlas")
    got = atlas.generate_cohort_set(db, picked, results_schema="spark_atlas")
    # 77 again, through the CLI on a spark:// URL (this process's session): its rows replaced, not added
    url = f"spark://local[2]?database=eunomia_atlas&parquet={tmp_path / 'parquet'}"
    capsys.readouterr()
    assert main(["cohort", "atlas", "--source", url, "--json", str(DATA / "ohdsi_phenotypes" / "cohorts" / "77.json"),
                 "--results-schema", "spark_atlas"]) == 0
    assert "391" in capsys.readouterr().out
    copy = tmp_path / "eunomia.duckdb"
    shutil.copy(eunomia_db, copy)
    want = atlas.generate_cohort_set(copy, picked)

    def summary(gens):
        return [(g.cohort_id, g.entries, g.persons, g.base_persons, g.attrition) for g in gens]
    assert summary(got) == summary(want)
    assert [g[:3] for g in summary(got)] == [(27, 101, 101), (77, 391, 391), (327, 12873, 2664), (1035, 0, 0)]
    assert got[0].base_persons == 101 and [a["persons_remaining"] for a in got[0].attrition] == [101]
    rows = sorted(tuple(r) for r in spark.sql("SELECT cohort_definition_id, subject_id, cohort_start_date, "
                                              "cohort_end_date FROM spark_atlas.cohort").collect())
    con = duckdb.connect(str(copy), read_only=True)
    assert rows == sorted(con.execute("SELECT cohort_definition_id, subject_id, cohort_start_date, cohort_end_date "
                                      "FROM results.cohort").fetchall())
    con.close()
    assert len(rows) == len(set(rows)) == 101 + 391 + 12873
    # nothing left behind: the results tables only, no global temporary view, the CDM database as it was
    assert {r.tableName for r in spark.sql("SHOW TABLES IN spark_atlas").collect()} == {
        "cohort", "cohort_censor_stats", "cohort_inclusion", "cohort_inclusion_result", "cohort_inclusion_stats",
        "cohort_summary_stats"}
    assert spark.sql("SHOW VIEWS IN global_temp").collect() == []     # nor CIRCE's own session views (1035's)
    assert "ctepersons" not in {r.viewName.lower() for r in spark.sql("SHOW VIEWS").collect()}
    assert {r.tableName for r in spark.sql("SHOW TABLES IN eunomia_atlas").collect()} == cdm_tables
    # a generation that fails half-way (here: CIRCE's final working table) leaves the cohort table as it was and
    # drops what it made: Spark has no transaction to roll back
    from omop_behrt.db import spark as spark_db
    from omop_behrt.db.database import SourceError
    real = spark_db.SparkStatements.execute_raw

    def failing(self, sql):
        if "final_cohort" in sql and sql.lstrip().upper().startswith("CREATE TABLE"):
            raise RuntimeError("injected failure")
        return real(self, sql)
    before = sorted(tuple(r) for r in spark.sql("SELECT * FROM spark_atlas.cohort").collect())
    with monkeypatch.context() as m, pytest.raises(SourceError, match="injected failure"):
        m.setattr(spark_db.SparkStatements, "execute_raw", failing)
        atlas.generate_cohort_set(db, picked[1:2], cohort_ids=[77], results_schema="spark_atlas")
    assert sorted(tuple(r) for r in spark.sql("SELECT * FROM spark_atlas.cohort").collect()) == before
    assert len({r.tableName for r in spark.sql("SHOW TABLES IN spark_atlas").collect()}) == 6
    assert spark.sql("SHOW VIEWS IN global_temp").collect() == []


def test_concurrent_cohort_rebuilds_on_spark_keep_every_row(spark, eunomia_spark, monkeypatch):
    """Spark cannot delete rows from a Parquet table, so a rebuild reads the table and rewrites it: two writers that
    read before either wrote would each drop the other's cohort. Two threads that rebuild cohorts 11 and 12, their
    rewrites started together and each made to wait after its read until the other has read too (or 5 s, if a
    lock keeps it out), must leave both cohorts, each once (without the lock: one is lost, or the two overwrites
    collide). A writer that finds the table's file lock held by another process waits, then fails with the
    table's name, leaving the rows as they were."""
    import threading

    from omop_behrt.db import spark as spark_db
    from omop_behrt.db.database import SourceError, load_sql, render
    from omop_behrt.lock import exclusive_lock
    from omop_behrt.tasks import cohorts
    db = spark_db.SparkDatabase(spark, eunomia_spark)
    cohorts.first_occurrence_cohort(db, 10, [192671], results_schema="spark_race", descendants=False)
    both_flushing, both_read = threading.Barrier(2, timeout=120), threading.Barrier(2, timeout=5)
    real, real_flush = spark_db.SparkStatements._kept_and_inserted, spark_db.SparkStatements.flush

    def flush_together(self):
        both_flushing.wait()                      # both blocks done: their rewrites (and locks) start together
        real_flush(self)

    def read_then_wait(self, table, deletes):
        rows = real(self, table, deletes)
        try:
            both_read.wait()
        except threading.BrokenBarrierError:      # the other writer is kept out until this one has written
            pass
        return rows
    counts, errors = {}, []

    def rebuild(cid: int, concepts: list[int]) -> None:
        try:
            counts[cid] = cohorts.first_occurrence_cohort(db, cid, concepts, results_schema="spark_race",
                                                          descendants=False)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=rebuild, args=(11, [192671])),
               threading.Thread(target=rebuild, args=(12, [40481087]))]
    with monkeypatch.context() as m:
        m.setattr(spark_db.SparkStatements, "_kept_and_inserted", read_then_wait)
        m.setattr(spark_db.SparkStatements, "flush", flush_together)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    rows = [tuple(r) for r in spark.sql("SELECT cohort_definition_id, subject_id FROM spark_race.cohort").collect()]
    by_cohort = {c: sum(1 for r in rows if r[0] == c) for c in (10, 11, 12)}
    assert by_cohort == {10: 479, 11: 479, 12: counts[12]} and counts == {11: 479, 12: by_cohort[12]} and counts[12] > 0
    assert len(rows) == len(set(rows))
    # another process holding the table's file lock: this writer waits, then names the table; nothing changes
    location = spark_db.table_location(spark, "spark_race.cohort")
    path = Path(location.removeprefix("file:")).resolve()
    monkeypatch.setattr(spark_db, "REWRITE_LOCK_TIMEOUT", 0.5)
    with exclusive_lock(path.parent / f".{path.name}.omop_behrt.lock", 0, "held"):
        with pytest.raises(SourceError, match=r"spark_race.*cohort.*another process"):
            with db.transaction() as tx:               # a cohort rebuild's block, without its (slow) insert
                tx.execute(render(load_sql("cohorts/delete_cohort.sql"), {"cohort_table": "spark_race.cohort"}),
                           {"cohort_definition_id": 10})
    assert sorted(tuple(r) for r in spark.sql("SELECT cohort_definition_id, subject_id FROM spark_race.cohort"
                                              ).collect()) == sorted(rows)


def test_block_deleting_from_a_delta_like_table_holds_its_lock_to_the_end(spark, monkeypatch):
    """A table that deletes rows itself (Delta; here a Parquet table said to, its statements recorded rather than
    run: no Delta Lake in this environment) commits a cohort's delete and its inserts apart, so the block that
    deletes holds the table's rewrite lock until it ends, and no longer: another writer is kept out meanwhile, a
    second delete in the block does not wait on the block's own lock, and commit or failure both release it."""
    from omop_behrt.db import spark as spark_db
    from omop_behrt.db.database import SourceError
    spark.sql("CREATE DATABASE IF NOT EXISTS spark_delta_like")
    spark.sql("CREATE TABLE IF NOT EXISTS spark_delta_like.cohort (cohort_definition_id INT, subject_id BIGINT) "
              "USING parquet")
    db = spark_db.SparkDatabase(spark, "spark_delta_like")
    ran: list[str] = []

    class Recorded:
        def collect(self):
            return []
    monkeypatch.setattr(spark_db.SparkStatements, "_deletes_rows", lambda self, table: True)
    monkeypatch.setattr(db, "frame", lambda sql, params=None: ran.append(" ".join(str(sql).split())) or Recorded())

    def other_writer_kept_out() -> bool:
        try:
            with spark_db.rewrite_lock(spark, "spark_delta_like.cohort", timeout=0.2):
                return False
        except SourceError as e:
            assert "spark_delta_like" in str(e)
            return True
    delete = "DELETE FROM spark_delta_like.cohort WHERE cohort_definition_id = :c"
    insert = "INSERT INTO spark_delta_like.cohort SELECT 7, 1"
    assert not other_writer_kept_out()
    with db.transaction() as tx:
        tx.execute(delete, {"c": 7})
        assert other_writer_kept_out()
        tx.execute(insert)
        tx.execute(delete, {"c": 8})                    # the block's own lock: no wait
        assert other_writer_kept_out()
    assert not other_writer_kept_out()
    assert [s.split()[0] for s in ran] == ["DELETE", "INSERT", "DELETE"]   # run, not held back: the table deletes
    with pytest.raises(RuntimeError, match="boom"):
        with db.transaction() as tx:
            tx.execute(delete, {"c": 7})
            raise RuntimeError("boom")
    assert not other_writer_kept_out()


def test_join_of_staged_parts_reads_a_row_group_at_a_time(tmp_path, monkeypatch):
    """The executors stage persons in row groups of ``JOIN_BATCH_ROWS`` and the driver joins the parts one row group
    at a time (one 1M-row group per partition made the driver's memory grow with the CDM): each partition's part
    (``_rows_writer``, run here as an executor would) has row groups of that size, and the joined file holds every
    part's good rows in part order, in the contract's schema, no read having taken more than one row group."""
    from omop_behrt.adapters import omop_spark
    from omop_behrt.adapters.omop import _PERSON_QUERY_SCHEMA
    from omop_behrt.events import PERSONS_SCHEMA
    monkeypatch.setattr(omop_spark, "JOIN_BATCH_ROWS", 4)
    want = []
    for k, n in enumerate((10, 3)):
        ids = list(range(k * 100, k * 100 + n))
        batch = pa.RecordBatch.from_pydict({
            f.name: (ids if f.name == "subject_id" else ["8507"] * n if f.name == "sex" else
                     ["birth_date missing"] + [None] * (n - 1) if f.name == "reason" else [None] * n)
            for f in _PERSON_QUERY_SCHEMA}, schema=_PERSON_QUERY_SCHEMA)
        monkeypatch.setattr(omop_spark, "_partition_id", lambda k=k: k)
        stats = list(omop_spark._rows_writer(str(tmp_path), "person")(iter([batch])))
        assert json.loads(stats[0]["stats"][0].as_py())["good"] == n - 1
        want += ids[1:]
    parts = sorted(tmp_path.glob("person-p*.parquet"))
    assert [pq.ParquetFile(p).num_row_groups for p in parts] == [3, 1]      # 9 good rows in 4s; 2 in one
    read = []
    real = pq.ParquetFile.read_row_group

    def counted(self, i, *a, **k):
        t = real(self, i, *a, **k)
        read.append(t.num_rows)
        return t
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("a part read whole"))
    omop_spark._join(parts, PERSONS_SCHEMA, tmp_path / "persons.parquet")
    got = pq.read_table(tmp_path / "persons.parquet")
    assert got.schema == PERSONS_SCHEMA and got["subject_id"].to_pylist() == want
    assert read == [4, 4, 1, 2]

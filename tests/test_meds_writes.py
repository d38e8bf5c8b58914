"""How MEDS is written: in one pass by ``extract(meds_out=...)`` (equal to extract + to_meds, row for row), and
safely: two ``to_meds`` into one folder at once give one valid dataset, a failed or killed run leaves the old one.

Rows are compared with DuckDB (EXCEPT ALL both ways), counts computed from the event directory independently of
the writer, and every dataset passes the official validator (tests/test_meds_validation.py).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

pytest.importorskip("meds", reason="the `meds` package (official MEDS schemas) is not installed")

from omop_behrt.adapters import meds as meds_adapter  # noqa: E402
from omop_behrt.adapters import omop  # noqa: E402
from omop_behrt.adapters.meds import to_meds  # noqa: E402
from omop_behrt.events import EventDir  # noqa: E402
from test_meds_validation import validate_meds_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _rows(folder: Path) -> str:
    return f"read_parquet('{folder}/data/*.parquet')"


def assert_same_rows(a: Path, b: Path) -> int:
    """Both MEDS datasets hold the same multiset of rows (all columns); returns the row count."""
    con = duckdb.connect()
    n_a, n_b = (con.execute(f"SELECT COUNT(*) FROM {_rows(x)}").fetchone()[0] for x in (a, b))
    assert n_a == n_b
    for x, y in ((a, b), (b, a)):
        extra = con.execute(f"SELECT COUNT(*) FROM (SELECT * FROM {_rows(x)} EXCEPT ALL SELECT * FROM {_rows(y)})"
                            ).fetchone()[0]
        assert extra == 0, f"{extra} rows of {x} are not in {y}"
    codes = [pq.read_table(x / "metadata" / "codes.parquet") for x in (a, b)]
    assert codes[0].equals(codes[1])
    return n_a


def expected_counts(ev: EventDir) -> tuple[int, int]:
    """(rows, subjects) a MEDS dataset of ``ev`` must hold, counted from the event directory with DuckDB:
    events + a MEDS_BIRTH per birth date, a MEDS_DEATH per death date, a SEX row per person, a source-id row."""
    con = duckdb.connect()
    files = [str(f) for f in ev.event_files()]
    events = con.execute("SELECT COUNT(*) FROM read_parquet($f)", {"f": files}).fetchone()[0]
    p = str(ev.path / "persons.parquet")
    person_rows, persons = con.execute(
        "SELECT COUNT(birth_date) + COUNT(death_date) + COUNT(*) + COUNT(source_id), COUNT(*) FROM read_parquet($p)",
        {"p": p}).fetchone()
    subjects = con.execute("SELECT COUNT(*) FROM (SELECT subject_id FROM read_parquet($f) UNION "
                           "SELECT subject_id FROM read_parquet($p))", {"f": files, "p": p}).fetchone()[0]
    return events + person_rows, subjects


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".tmp-", ".old-")))


# -- one pass ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows_per_range", [None, 20_000])
def test_extract_meds_out_equals_extract_then_to_meds(eunomia_db, eunomia_events, tmp_path, monkeypatch,
                                                      rows_per_range):
    """MEDS only (no event directory kept), sorted inside DuckDB in one subject range or in eleven (at most 20,000
    events each, streamed in batches of 7,000): the same shards as to_meds of the extraction, row for row and in
    order; same codes, counts, notes and quarantine; the validator passes."""
    from omop_behrt.adapters import omop_meds
    if rows_per_range:
        monkeypatch.setattr(omop_meds.SortedMeds, "ROWS_PER_BUCKET", rows_per_range)
    ranges = []

    def spy(rel, batch_rows):                  # one sorted query per subject range
        ranges.append(batch_rows)
        return meds_adapter.arrow_reader(rel, batch_rows)
    monkeypatch.setattr(omop_meds, "arrow_reader", spy)
    # small batches too: a (subject, day)'s rebuilt visit then spans batches, and is still counted once
    summary = omop.extract(eunomia_db, None, meds_out=tmp_path / "one", rows_per_shard=50_000, progress=False,
                           batch_rows=7_000 if rows_per_range else 1_000_000)
    assert len(ranges) == (11 if rows_per_range else 1)      # 217,014 events: 11 ranges of about 19,700
    to_meds(eunomia_events, tmp_path / "two", rows_per_shard=50_000)
    assert len(validate_meds_dataset(tmp_path / "one")) == summary.meds["shards"] == 5
    for i in range(5):
        a, b = (pq.read_table(x / "data" / f"{i}.parquet") for x in (tmp_path / "one", tmp_path / "two"))
        assert a.equals(b)
    n = assert_same_rows(tmp_path / "one", tmp_path / "two")
    rows, subjects = expected_counts(eunomia_events)
    assert n == rows == summary.meds["rows"] and summary.meds["subjects"] == subjects == 2694
    ref = eunomia_events.manifest["summary"]
    for key in ("events_out", "events_in", "events_by_domain", "visits", "rebuilt_visits", "quarantined",
                "quarantined_by_reason", "checks", "notes", "persons"):
        assert getattr(summary, key) == ref[key], key
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [".omop-behrt-meds.lock", "data", "metadata",
                                                                    "quarantine.parquet"]
    assert "MEDS" in summary.table()


def test_extract_leaves_the_sources_connection_as_it_was(eunomia_db, tmp_path, monkeypatch):
    """Both paths work in temporary tables of the source's own connection (the joins every table shares, the
    concepts in use, the staged events): afterwards none is left, also after a failure, and the insertion-order
    setting lowered is back."""
    from omop_behrt.adapters import omop_meds
    from omop_behrt.db.database import Database
    db = Database.connect(eunomia_db)
    db.duck.execute("SET preserve_insertion_order = true")
    made = []
    real = Database.execute

    def spy(self, sql, params=None):
        made.extend(re.findall(r'"(omop_behrt_\w+)"', sql))
        return real(self, sql, params)
    monkeypatch.setattr(Database, "execute", spy)
    omop.extract(db, None, meds_out=tmp_path / "m", progress=False)
    omop.extract(db, tmp_path / "ev", progress=False)

    def fail(*a):
        raise RuntimeError("disk full")
    monkeypatch.setattr(omop_meds.SortedMeds, "_sort", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        omop.extract(db, None, meds_out=tmp_path / "m2", progress=False)
    assert set(made) == {"omop_behrt_person_status", "omop_behrt_observation_gaps", "omop_behrt_concepts",
                         "omop_behrt_events"}
    assert db.duck.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0] is True
    assert db.duck.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall() == []
    db.close()


@pytest.mark.postgres
def test_extract_meds_out_from_postgres_equals_duckdb(pg_url, pg_schema, synthea_dir, tmp_path, monkeypatch):
    """A server's events cannot be sorted beside the persons written here: they are spilled and sorted bucket by
    bucket (here in three) instead. Same MEDS dataset, shard for shard, as the DuckDB source's sorted path."""
    from cdm_fixtures import load_postgres_cdm
    load_postgres_cdm(pg_url, pg_schema, "5.4")
    monkeypatch.setattr(meds_adapter, "PERSONS_PER_BUCKET", 4)
    pg = omop.extract(pg_url, None, meds_out=tmp_path / "pg", cdm_schema=pg_schema, progress=False,
                      batch_rows=5000)
    duck = omop.extract(synthea_dir, None, meds_out=tmp_path / "duck", progress=False)
    assert pg.meds["rows"] == duck.meds["rows"] > 26_000 and pg.events_out == duck.events_out
    validate_meds_dataset(tmp_path / "pg")
    for f in sorted((tmp_path / "duck" / "data").glob("*.parquet")):
        assert pq.read_table(tmp_path / "pg" / "data" / f.name).equals(pq.read_table(f))
    assert pg.quarantined_by_reason == duck.quarantined_by_reason and pg.checks == duck.checks


def test_extract_meds_out_passes_schemas_and_cohort_filter(tmp_path):
    """MEDS only from a CDM in schema ``cdm`` whose cohort lives in schema ``res``: the schemas and the cohort filter
    reach the extraction (same rows as extract + to_meds with the same arguments; only the cohort's persons)."""
    from cdm_fixtures import build_duckdb_cdm
    db = build_duckdb_cdm(tmp_path / "s.duckdb", "5.4", schema="cdm")
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA res")
    con.execute("CREATE TABLE res.cohort AS SELECT 7 AS cohort_definition_id, person_id AS subject_id, "
                "DATE '2000-01-01' AS cohort_start_date, DATE '2000-01-01' AS cohort_end_date "
                "FROM cdm.person ORDER BY person_id LIMIT 5")
    chosen = {r[0] for r in con.execute("SELECT subject_id FROM res.cohort").fetchall()}
    con.close()
    args = dict(cdm_schema="cdm", results_schema="res", options=omop.ExtractOptions(cohort_id=7), progress=False)
    summary = omop.extract(db, None, meds_out=tmp_path / "one", **args)
    omop.extract(db, tmp_path / "ev", **args)
    to_meds(tmp_path / "ev", tmp_path / "two")
    assert assert_same_rows(tmp_path / "one", tmp_path / "two") == summary.meds["rows"] > 0
    got = duckdb.sql(f"SELECT DISTINCT subject_id FROM '{tmp_path / 'one' / 'data'}/*.parquet'").fetchall()
    assert {r[0] for r in got} == chosen and summary.persons == 5


def test_extract_meds_out_beside_an_event_directory_in_shards(eunomia_db, tmp_path):
    """Both outputs from one command: the event directory as usual, and MEDS in shards of whole subjects equal, shard
    for shard, to to_meds of that event directory with the same shard size."""
    omop.extract(eunomia_db, tmp_path / "ev", meds_out=tmp_path / "one", rows_per_shard=50_000, progress=False)
    ev = EventDir.open(tmp_path / "ev")
    assert ev.events().count_rows() == ev.manifest["summary"]["events_out"] == 217_014
    info = to_meds(ev, tmp_path / "two", rows_per_shard=50_000)
    shards = validate_meds_dataset(tmp_path / "one")
    assert len(shards) == info["shards"] == 5
    for i in range(5):
        a, b = (pq.read_table(x / "data" / f"{i}.parquet") for x in (tmp_path / "one", tmp_path / "two"))
        assert a.equals(b)


def test_event_table_buckets_by_subject_range(tmp_path):
    """Rows go to the bucket of their subject's range (cut at equal person counts), each bucket in arrival order;
    together the buckets hold every row once."""
    import numpy as np
    import pyarrow as pa
    from omop_behrt.events import EVENTS_SCHEMA, validate_events
    sink = meds_adapter.EventTable(tmp_path / "spill", persons_per_bucket=3)
    sink.plan(np.array([40, 10, 20, 30, 50, 60, 70]))      # 7 persons -> 3 buckets: [10, 30) [30, 50) [50, ...)
    assert sink.bounds.tolist() == [30, 50]
    subjects = [70, 10, 30, 20, 50, 10, 45, 99, 5]
    batch = validate_events(pa.table({"subject_id": subjects, "code": [f"X/{i}" for i in range(9)],
                                      "domain": ["condition"] * 9}))
    sink.write(batch.slice(0, 4))
    sink.write(batch.slice(4))
    assert sink.rows == 9
    got = [sink.con.sql(f"SELECT subject_id, code FROM {rel}").fetchall() for rel, _, _ in sink.parts()]
    assert got == [[(10, "X/1"), (20, "X/3"), (10, "X/5"), (5, "X/8")],
                   [(30, "X/2"), (45, "X/6")],
                   [(70, "X/0"), (50, "X/4"), (99, "X/7")]]
    assert sink.parts() == [("events_b0", None, 30), ("events_b1", 30, 50), ("events_b2", 50, None)]
    assert sink.con.execute("SELECT COUNT(*) FROM events_t").fetchone()[0] == 9
    assert batch.schema == EVENTS_SCHEMA
    sink.close()
    assert not (tmp_path / "spill").exists()


def test_extract_meds_out_refuses_what_it_cannot_keep(eunomia_db, tmp_path):
    with pytest.raises(ValueError, match="--resume needs --out"):
        omop.extract(eunomia_db, None, meds_out=tmp_path / "m", resume=True, progress=False)
    with pytest.raises(ValueError, match="--notes needs --out"):
        omop.extract(eunomia_db, None, meds_out=tmp_path / "m", options=omop.ExtractOptions(notes=True),
                     progress=False)
    with pytest.raises(ValueError, match="meds_out"):
        omop.extract(eunomia_db, None, progress=False)


def test_extract_cli_meds_out(eunomia_db, eunomia_events, tmp_path, capsys):
    from omop_behrt.cli.main import main
    assert main(["extract", "--source", str(eunomia_db), "--meds-out", str(tmp_path / "m"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "MEDS" in out and str(tmp_path / "m") in out
    validate_meds_dataset(tmp_path / "m")
    assert assert_same_rows(tmp_path / "m", _one_run(eunomia_events, tmp_path)) > 0
    # nothing is lost: the quarantined rows (Eunomia: one drug before birth) stay beside the dataset, with reasons
    q = pq.read_table(tmp_path / "m" / "quarantine.parquet")
    assert q.num_rows == eunomia_events.quarantine().num_rows == 1
    assert q["reason"].to_pylist() == eunomia_events.quarantine()["reason"].to_pylist()


def _one_run(ev: EventDir, tmp_path: Path) -> Path:
    if not (tmp_path / "single").exists():
        to_meds(ev, tmp_path / "single", rows_per_shard=50_000)
    return tmp_path / "single"


# -- safe writes -------------------------------------------------------------------------------------------------
CHILD = """
import sys, time
from omop_behrt.adapters.meds import to_meds
start = time.time()
to_meds(sys.argv[1], sys.argv[2], rows_per_shard=int(sys.argv[3]))
print("SPAN", start, time.time())
"""


def _run_overlapping(child: str, source: str, out: Path) -> None:
    """Run ``child`` twice at once into ``out`` (shard sizes 50,000 and 30,000, so that mixed shards would show);
    both succeed and their runs overlap in time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", child, source, str(out), str(size)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for size in (50_000, 30_000)]
    spans = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        spans.append([float(x) for x in stdout.split("SPAN")[1].split()])
    assert max(s[0] for s in spans) < min(s[1] for s in spans), f"the runs did not overlap: {spans}"


def test_two_concurrent_to_meds_into_one_folder(eunomia_events, tmp_path):
    """Two processes write one folder at once (their runs overlap in time), with different shard sizes so that
    mixed shards would show: the result is one whole run's dataset (5 or 8 shards), valid, equal to a single run;
    the older dataset's shards are gone, other files in the folder stay."""
    out = tmp_path / "m"
    to_meds(eunomia_events, out, rows_per_shard=7_000)            # an older dataset, 32 shards
    (out / "labels").mkdir()
    (out / "labels" / "keep.txt").write_text("not ours")
    _run_overlapping(CHILD, str(eunomia_events.path), out)
    shards = validate_meds_dataset(out)
    assert len(shards) in (5, 8) and len(shards) == len(list((out / "data").iterdir()))   # the 32 old ones: gone
    rows, subjects = expected_counts(eunomia_events)
    con = duckdb.connect()
    assert con.execute(f"SELECT COUNT(*), COUNT(DISTINCT subject_id) FROM {_rows(out)}").fetchone() == (rows,
                                                                                                     subjects)
    assert_same_rows(out, _one_run(eunomia_events, tmp_path))
    assert (out / "labels" / "keep.txt").read_text() == "not ours" and _leftovers(out) == []


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_a_failed_to_meds_leaves_the_old_dataset(eunomia_events, tmp_path, monkeypatch):
    out = tmp_path / "m"
    to_meds(eunomia_events, out, rows_per_shard=50_000)
    before = _snapshot(out)
    calls = []

    def fail_on_third(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real(self, batch)
    real = meds_adapter.ShardWriter.write
    monkeypatch.setattr(meds_adapter.ShardWriter, "write", fail_on_third)
    with pytest.raises(OSError, match="simulated"):
        to_meds(eunomia_events, out, rows_per_shard=7_000)
    assert _snapshot(out) == before and _leftovers(out) == []
    validate_meds_dataset(out)


def test_a_killed_to_meds_leaves_the_old_dataset_and_its_leftovers_go(eunomia_events, tmp_path):
    """SIGKILL while the private folder is being written: the old dataset is untouched; the next run removes
    the dead run's private folder."""
    out = tmp_path / "m"
    to_meds(eunomia_events, out, rows_per_shard=50_000)
    before = _snapshot(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(eunomia_events.path), str(out), "7000"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob(f".tmp-{p.pid}-*")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the child finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert _snapshot(out) == before
    assert [x.split("-")[1] for x in _leftovers(out)] == [str(p.pid)]
    to_meds(eunomia_events, out, rows_per_shard=50_000)
    assert _leftovers(out) == [] and _snapshot(out).keys() == before.keys()
    validate_meds_dataset(out)


def test_private_folders_of_another_host_are_left_alone(eunomia_events, tmp_path):
    """On a shared file system a run elsewhere cannot be asked whether it lives: its private folder stays until it
    has not changed for a day; this host's dead runs' folders go at once."""
    out = tmp_path / "m"
    out.mkdir()
    elsewhere = out / ".tmp-1-abcdef12"
    (elsewhere / "data").mkdir(parents=True)
    (elsewhere / ".owner").write_text("another-host")
    old = out / ".tmp-2-abcdef34"
    old.mkdir()
    (old / ".owner").write_text("another-host")
    day_ago = time.time() - meds_adapter.FOREIGN_STALE_S - 60
    os.utime(old, (day_ago, day_ago))
    dead_here = meds_adapter.private_folder(out)
    dead_here.rename(out / ".tmp-999999999-abcdef56")        # a pid no process has here
    to_meds(eunomia_events, out, rows_per_shard=50_000)
    assert _leftovers(out) == [".tmp-1-abcdef12"]


def test_extract_meds_out_of_a_messy_cdm_equals_extract_then_to_meds(tmp_path):
    """Bad rows of every kind (null dates and persons, unknown persons, dates out of range, exact duplicates, a
    datetime on another day) and a header-only table: the sorted path quarantines, notes and counts exactly as
    the event directory does, and writes the same MEDS rows, shard for shard."""
    from cdm_fixtures import build_duckdb_cdm
    db = build_duckdb_cdm(tmp_path / "messy.duckdb", "5.4", schema="cdm")
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE cdm.condition_occurrence ALTER condition_start_date DROP NOT NULL")
    con.execute("ALTER TABLE cdm.drug_exposure ALTER person_id DROP NOT NULL")
    first = "(SELECT {id} FROM cdm.{t} ORDER BY 1 LIMIT {n})"
    con.execute("UPDATE cdm.condition_occurrence SET condition_start_date = NULL, condition_start_datetime = NULL "
                "WHERE condition_occurrence_id IN " + first.format(id="condition_occurrence_id",
                                                                  t="condition_occurrence", n=5))
    con.execute("UPDATE cdm.drug_exposure SET person_id = NULL WHERE drug_exposure_id IN "
                + first.format(id="drug_exposure_id", t="drug_exposure", n=3))
    con.execute("UPDATE cdm.procedure_occurrence SET person_id = 999999 WHERE procedure_occurrence_id IN "
                + first.format(id="procedure_occurrence_id", t="procedure_occurrence", n=2))
    con.execute("UPDATE cdm.measurement SET measurement_date = DATE '1700-01-01', measurement_datetime = NULL "
                "WHERE measurement_id IN " + first.format(id="measurement_id", t="measurement", n=4))
    con.execute("UPDATE cdm.drug_exposure SET drug_exposure_start_datetime = drug_exposure_start_datetime "
                "+ INTERVAL 3 DAY WHERE drug_exposure_id IN " + first.format(id="drug_exposure_id",
                                                                            t="drug_exposure", n=10))
    con.execute("INSERT INTO cdm.condition_occurrence SELECT * FROM cdm.condition_occurrence "
                "WHERE condition_start_date IS NOT NULL ORDER BY condition_occurrence_id LIMIT 3")
    con.execute("DELETE FROM cdm.observation")
    con.close()
    args = dict(cdm_schema="cdm", progress=False, rows_per_shard=5_000)
    one = omop.extract(db, None, meds_out=tmp_path / "one", **args)
    two = omop.extract(db, tmp_path / "ev", **args)
    to_meds(tmp_path / "ev", tmp_path / "two", rows_per_shard=5_000)
    reasons = one.quarantined_by_reason
    assert reasons["condition_occurrence: null condition_start_date"] == 5
    assert reasons["condition_occurrence: duplicate condition_occurrence_id"] == 3
    assert reasons["drug_exposure: null person_id"] == 3
    assert reasons["procedure_occurrence: person_id not in person table"] == 2
    assert any(k.startswith("drug_exposure: drug_exposure_start_datetime ignored") for k in one.notes)
    for key in ("events_in", "events_out", "events_by_domain", "quarantined", "quarantined_by_reason", "notes",
                "checks", "visits", "rebuilt_visits", "persons"):
        assert getattr(one, key) == getattr(two, key), key
    assert one.events_in == one.events_out + one.quarantined
    validate_meds_dataset(tmp_path / "one")
    shards = sorted((tmp_path / "two" / "data").glob("*.parquet"))
    assert len(shards) > 3 and [f.name for f in sorted((tmp_path / "one" / "data").glob("*.parquet"))] == \
        [f.name for f in shards]
    for f in shards:
        assert pq.read_table(tmp_path / "one" / "data" / f.name).equals(pq.read_table(f))
    con = duckdb.connect()
    q = [f"SELECT source, row, subject_id, time, code, reason FROM read_parquet('{p}')"
         for p in (tmp_path / "one" / "quarantine.parquet", tmp_path / "ev" / "quarantine-*.parquet")]
    assert con.execute(f"SELECT COUNT(*) FROM ({q[0]} EXCEPT ALL {q[1]})").fetchone()[0] == 0
    assert con.execute(f"SELECT COUNT(*) FROM ({q[1]} EXCEPT ALL {q[0]})").fetchone()[0] == 0
    assert con.execute(f"SELECT COUNT(*) FROM ({q[0]})").fetchone()[0] == 5 + 3 + 3 + 2 + 4 + 108


def test_extract_meds_out_with_no_table_or_no_person(eunomia_db, tmp_path):
    """No table of --domains in the CDM: the persons' rows alone (birth, sex, source id per person); an empty
    selection with --allow-empty: one empty shard. Both pass the validator."""
    s = omop.extract(eunomia_db, None, meds_out=tmp_path / "dev", progress=False,
                     options=omop.ExtractOptions(domains=["device"]))
    assert s.skipped == {"device": "table device_exposure has no CDM columns"} and s.events_out == 0
    assert s.meds["rows"] == 3 * 2694 and s.meds["subjects"] == 2694
    codes = pq.read_table(tmp_path / "dev" / "metadata" / "codes.parquet")["code"].to_pylist()
    assert codes == ["MEDS_BIRTH", "PERSON/SOURCE_ID", "SEX/F", "SEX/M"]
    validate_meds_dataset(tmp_path / "dev")
    s = omop.extract(eunomia_db, None, meds_out=tmp_path / "none", progress=False,
                     options=omop.ExtractOptions(person_ids=[999_999_999], allow_empty=True))
    assert s.meds["rows"] == s.meds["subjects"] == 0 and s.meds["shards"] == 1
    assert [t.num_rows for t in validate_meds_dataset(tmp_path / "none")] == [0]


CHILD_EXTRACT = """
import sys, time
from omop_behrt.adapters import omop
start = time.time()
omop.extract(sys.argv[1], None, meds_out=sys.argv[2], rows_per_shard=int(sys.argv[3]), progress=False)
print("SPAN", start, time.time())
"""


def test_two_concurrent_extract_meds_out_into_one_folder(eunomia_db, eunomia_events, tmp_path):
    """Two `extract --meds-out` processes from one DuckDB file into one MEDS folder at once (the sorted path, with
    different shard sizes so that mixed shards would show): one whole run's dataset, valid, equal to to_meds of
    the extraction; the quarantine is there once; no private folder is left."""
    out = tmp_path / "m"
    _run_overlapping(CHILD_EXTRACT, str(eunomia_db), out)
    shards = validate_meds_dataset(out)
    assert len(shards) in (5, 8) and len(shards) == len(list((out / "data").iterdir()))
    assert_same_rows(out, _one_run(eunomia_events, tmp_path))
    assert pq.read_table(out / "quarantine.parquet").num_rows == 1         # Eunomia's one drug before birth
    assert _leftovers(out) == []

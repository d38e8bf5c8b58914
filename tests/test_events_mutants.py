"""Fast tests that kill mutants of omop_behrt/events.py which test_events.py let survive (bench/mutation.sh).

The quarantine of an event directory is read from every ``quarantine*.parquet`` file with its schema (a reader
that returned nothing, or missed a file, passed test_events.py); ``read_events(columns)`` reads those columns;
validate_persons names the table in its errors; rebuilt visit ids are exactly the documented splitmix64 of
(subject, day), checked against a plain-Python computation (a changed constant or shift passed before).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omop_behrt.events import EVENTS_SCHEMA, QUARANTINE_SCHEMA, EventDir


def _quarantine_rows(source: str, n: int) -> pa.Table:
    return pa.table({"source": [source] * n, "row": [str(i) for i in range(n)],
                     "subject_id": pa.array(range(n), pa.int64()),
                     "time": pa.array([dt.datetime(2020, 1, 1)] * n, pa.timestamp("us")),
                     "code": ["X/1"] * n, "reason": ["null person_id"] * n}, schema=QUARANTINE_SCHEMA)


def test_quarantine_reads_every_file(tmp_path):
    d = EventDir(tmp_path)
    (tmp_path / "events").mkdir()
    assert d.quarantine().num_rows == 0 and d.quarantine().schema == QUARANTINE_SCHEMA
    pq.write_table(_quarantine_rows("condition_occurrence", 3), tmp_path / "quarantine-omop.parquet")
    pq.write_table(_quarantine_rows("Condition.ndjson", 2), tmp_path / "quarantine-fhir-00000.parquet")
    pq.write_table(_quarantine_rows("ignored", 5), tmp_path / "not-a-quarantine.parquet")
    q = d.quarantine()
    assert q.schema == QUARANTINE_SCHEMA
    assert sorted(q["source"].to_pylist()) == ["Condition.ndjson"] * 2 + ["condition_occurrence"] * 3


def test_read_events_reads_the_columns_asked(tmp_path):
    (tmp_path / "events").mkdir()
    t = pa.table({"subject_id": pa.array([1, 2], pa.int64()),
                  "time": pa.array([dt.datetime(2020, 1, 1)] * 2, pa.timestamp("us")),
                  "code": ["A/1", "B/2"], "domain": ["condition", "drug"]})
    t = pa.table({f.name: (t[f.name] if f.name in t.column_names else pa.nulls(2, f.type)) for f in EVENTS_SCHEMA},
                 schema=EVENTS_SCHEMA)
    pq.write_table(t, tmp_path / "events" / "part-0.parquet")
    got = EventDir(tmp_path).read_events(["code"])
    assert got.column_names == ["code"] and got["code"].to_pylist() == ["A/1", "B/2"]


def test_quarantine_is_read_with_its_schema(tmp_path):
    """A quarantine file written with narrower types (int32 ids, ms times) comes back in QUARANTINE_SCHEMA."""
    t = _quarantine_rows("measurement", 2)
    narrow = t.cast(pa.schema([f.with_type(pa.int32()) if f.name == "subject_id" else
                               f.with_type(pa.timestamp("ms")) if f.name == "time" else f for f in t.schema]))
    pq.write_table(narrow, tmp_path / "quarantine-omop.parquet")
    q = EventDir(tmp_path).quarantine()
    assert q.schema == QUARANTINE_SCHEMA and q.equals(t)


def test_validate_persons_names_what_it_checks():
    from omop_behrt.events import EventSchemaError, validate_persons
    t = pa.table({"subject_id": pa.array([1, None, None], pa.int64()), "birth_date": pa.array([None] * 3, pa.date32())})
    with pytest.raises(EventSchemaError, match=r"^persons: column 'subject_id' has 2 null values$"):
        validate_persons(t)
    with pytest.raises(EventSchemaError, match=r"^site A: column 'subject_id' has 2 null values$"):
        validate_persons(t, "site A")
    with pytest.raises(EventSchemaError, match=r"^site A: "):
        validate_persons(pa.table({"subject_id": pa.array(["x"])}), "site A")


def _splitmix_visit(subject: int, day: int) -> int:
    """The rebuilt visit id written out with Python integers (mod 2**64), independently of numpy."""
    m = (1 << 64) - 1
    z = ((subject & m) * 0x9E3779B97F4A7C15 + (day & m)) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return -(z >> 2) - 1


def test_rebuilt_visit_ids_are_the_documented_hash():
    from omop_behrt.events import rebuilt_visit_ids
    subjects = np.array([1, 2, 123456789, 2**40 + 7, 1], dtype=np.int64)
    times = np.array(["2010-03-04T10:00", "2010-03-04T23:59", "1999-12-31T00:00", "2024-02-29T12:00",
                      "1965-06-01T08:30"], dtype="datetime64[us]")
    days = (times.astype("datetime64[D]") - np.datetime64("1970-01-01", "D")).astype(int)
    expected = [_splitmix_visit(int(s), int(d)) for s, d in zip(subjects, days)]
    got = rebuilt_visit_ids(subjects, times.astype(np.int64))
    assert got.tolist() == expected
    assert (got < 0).all() and len(set(expected)) == 5


def test_validate_events_names_what_it_checks():
    from omop_behrt.events import EventSchemaError, validate_events
    t = pa.table({"subject_id": pa.array([1], pa.int64())})
    with pytest.raises(EventSchemaError, match=r"^events: "):
        validate_events(t)
    with pytest.raises(EventSchemaError, match=r"^site B: "):
        validate_events(t, "site B")


def test_validate_persons_accepts_f_m_u_and_unknown():
    from omop_behrt.events import EventSchemaError, validate_persons
    ok = pa.table({"subject_id": pa.array([1, 2, 3, 4], pa.int64()), "sex": ["F", "M", "U", None]})
    assert validate_persons(ok)["sex"].to_pylist() == ["F", "M", "U", None]
    for bad in ("u", "X"):
        with pytest.raises(EventSchemaError, match=f"column 'sex' has '{bad}'; expected F, M or U"):
            validate_persons(pa.table({"subject_id": pa.array([1], pa.int64()), "sex": [bad]}))


def test_rebuilt_visits_leave_rows_without_subject_or_time_alone():
    """A row with no visit gets its (subject, day) visit; one with no subject or no time keeps a null visit."""
    from omop_behrt.events import fill_rebuilt_visits, rebuilt_visit_ids
    t = pa.array([dt.datetime(2020, 5, 1, 8), None, dt.datetime(2020, 5, 1, 9), dt.datetime(2021, 1, 1)],
                 pa.timestamp("us"))
    batch = pa.table({"subject_id": pa.array([4, 4, None, 4], pa.int64()), "time": t,
                      "visit_id": pa.array([None, None, None, 77], pa.int64())})
    got = fill_rebuilt_visits(batch)["visit_id"].to_pylist()
    day_us = int(dt.datetime(2020, 5, 1, 8).replace(tzinfo=dt.timezone.utc).timestamp() * 1e6)
    assert got == [int(rebuilt_visit_ids(np.array([4]), np.array([day_us]))[0]), None, None, 77]
    assert got[0] < 0


def test_write_json_sorts_keys_and_writes_other_types_as_text(tmp_path):
    from omop_behrt.events import write_json
    write_json({"b": 1, "a": {"d": dt.date(2020, 1, 2), "c": None}}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{\n  "a": {\n    "c": null,\n    "d": "2020-01-02"\n  },\n  "b": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]           # no temporary file left


def test_event_dir_files_schemas_and_manifest(tmp_path):
    """An event directory with no event or note shard still reads with the contract's schemas; the manifest goes to
    manifest.json; shards are zstd-compressed unless asked otherwise."""
    from omop_behrt.events import NOTES_SCHEMA, ShardWriter
    d = EventDir(tmp_path)
    d.events_dir.mkdir()
    assert d.events().schema == EVENTS_SCHEMA and d.read_events().num_rows == 0
    assert d.note_files() == [] and d.notes().schema == NOTES_SCHEMA and not d.has_notes()
    d.manifest = {"k": 1}
    d.write_manifest()
    assert EventDir(tmp_path).manifest == {"k": 1} and (tmp_path / "manifest.json").exists()
    w = ShardWriter(d.events_dir, "t", EVENTS_SCHEMA)
    row = {f.name: pa.array([None], f.type) for f in EVENTS_SCHEMA}
    row.update(subject_id=pa.array([1], pa.int64()), code=pa.array(["A/1"]), domain=pa.array(["condition"]),
               time=pa.array([dt.datetime(2020, 1, 1)], pa.timestamp("us")))
    w.write(pa.table(row, schema=EVENTS_SCHEMA))
    files = w.close()
    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    lz = ShardWriter(tmp_path / "lz", "t", EVENTS_SCHEMA, compression="lz4")
    lz.write(pa.table(row, schema=EVENTS_SCHEMA))
    assert pq.ParquetFile(lz.close()[0]).metadata.row_group(0).column(0).compression == "LZ4"
    (tmp_path / "notes").mkdir()
    assert d.has_notes() and d.note_files() == []
    with pytest.raises(FileNotFoundError, match="is not an event directory"):
        EventDir.open(tmp_path)                         # no persons.parquet
    (tmp_path / "persons.parquet").write_bytes(b"")
    assert EventDir.open(tmp_path).path == tmp_path and EventDir.open(str(tmp_path)).manifest == {"k": 1}


def test_writable_dir_makes_the_folder_and_names_it_when_it_cannot(tmp_path):
    from omop_behrt.events import writable_dir
    assert writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"       # already there: fine
    assert list((tmp_path / "a" / "b").iterdir()) == []                     # the probe is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        writable_dir(tmp_path / "f", "the MEDS folder")
    assert e.value.filename == str(tmp_path / "f") and "the MEDS folder must be a folder" in str(e.value)
    with pytest.raises(OSError) as e:
        writable_dir(tmp_path / "f" / "sub")
    assert e.value.filename == str(tmp_path / "f" / "sub") and "the output folder is not writable" in str(e.value)

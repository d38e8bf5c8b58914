"""Fast tests that kill mutants of omop_behrt/events.py which test_events.py let survive (bench/mutation.sh).

The quarantine of an event directory is read from every ``quarantine*.parquet`` file with its schema (a reader
that returned nothing, or missed a file, passed test_events.py); ``read_events(columns)`` reads those columns.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

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

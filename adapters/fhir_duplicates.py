"""Repeated FHIR resources (same resourceType and id, in one file or across files): keep one, quarantine the rest.

The rule: of the copies of one (type, id), the one with the latest ``meta.lastUpdated`` is kept (a copy without a
readable lastUpdated ranks below any copy with one); ties go to the copy read first (files in reading order:
Patient NDJSON first, then by path; in a file, by line or entry). The kept copy stands for the resource whether it
was written or quarantined for a reason of its own. Every other copy that had output (events, rows pending on a
Patient, a person) loses all of it and gets one quarantine row ``duplicate <Type>/<id> (kept the one in <file>
at line <n>)``; a copy quarantined for a reason of its own keeps that one row. Resources in = out + quarantined
stays exact.

Settled after the parts finish, in DuckDB over the parts' resource lists (``.fhir/resources-*.parquet``). Event
shards holding a dropped copy's events are rewritten without them (the row-aligned ``.fhir/eventkeys-*`` shards
say which rows), and only those. Settling again (a resume) gives the same result: a rewritten shard has fewer rows
than its keys shard and is left as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omop_behrt.events import QUARANTINE_SCHEMA, write_table

#: (type, id) pairs read more than once: one hash aggregation over two columns, the only cost when there are none
_REPEATED_SQL = "SELECT type, id FROM read_parquet($res) GROUP BY type, id HAVING COUNT(*) > 1"

#: the copies of the repeated pairs, ranked; all but the first of each are dropped
_DROPPED_SQL = """
WITH c AS (SELECT r.key, r.type, r.id, r.source, r.row,
                  ROW_NUMBER() OVER (PARTITION BY r.type, r.id
                                     ORDER BY TRY_CAST(r.updated AS TIMESTAMPTZ) DESC NULLS LAST, r.key) AS k
           FROM read_parquet($res) r SEMI JOIN repeated p ON r.type = p.type AND r.id = p.id)
SELECT d.key, d.type, d.source, d.row,
       'duplicate ' || d.type || '/' || d.id || ' (kept the one in ' || kept.source || ' at '
       || CASE WHEN regexp_full_match(kept.row, '[0-9]+') THEN 'line ' || kept.row ELSE kept.row END || ')' AS reason
FROM c d JOIN c kept ON kept.type = d.type AND kept.id = d.id AND kept.k = 1
WHERE d.k > 1
ORDER BY d.key
"""


@dataclass
class Duplicates:
    """Copies not kept: their keys, quarantine rows for those that had output, and counts."""

    dropped: pa.Array = field(default_factory=lambda: pa.array([], pa.int64()))
    quarantine: pa.Table = field(default_factory=QUARANTINE_SCHEMA.empty_table)
    by_type: dict[str, int] = field(default_factory=dict)
    out: int = 0          # of those quarantined here: counted as out by their part (events or a person)
    pending: int = 0      # of those quarantined here: pending on a Patient when their part ended

    def keep(self, t: pa.Table) -> pa.Table:
        """The rows of ``t`` (with a ``key`` column) that do not belong to a dropped copy."""
        if not len(self.dropped) or not t.num_rows:
            return t
        return t.filter(pc.invert(pc.is_in(t.column("key"), value_set=self.dropped)))


def settle(work: Path, events_dir: Path, part_quarantine: list[Path]) -> Duplicates:
    """Find the copies not kept under ``work`` (the run's .fhir folder) and drop their events from the shards."""
    res = sorted(str(f) for f in work.glob("resources-*.parquet"))
    if not res:
        return Duplicates()
    con = duckdb.connect()
    try:
        repeated = con.sql(_REPEATED_SQL, params={"res": res}).to_arrow_table()
        if not repeated.num_rows:
            return Duplicates()
        con.register("repeated", repeated)
        dropped = con.sql(_DROPPED_SQL, params={"res": res}).to_arrow_table()
        con.register("dropped", dropped)
        # a dropped copy quarantined for a reason of its own (same file and line) keeps that row
        if part_quarantine:
            q = con.sql("SELECT DISTINCT source, row FROM read_parquet($q)",
                        params={"q": [str(f) for f in part_quarantine]}).to_arrow_table()
        else:
            q = pa.table({"source": pa.array([], pa.string()), "row": pa.array([], pa.string())})
        con.register("q", q)
        pending = sorted(str(f) for f in work.glob("pending-*.parquet"))
        con.execute("CREATE TEMP TABLE p AS " + (
            "SELECT DISTINCT key FROM read_parquet($p) WHERE key IN (SELECT key FROM dropped)" if pending else
            "SELECT CAST(NULL AS BIGINT) AS key WHERE false"), {"p": pending} if pending else {})
        had_output = con.sql(
            "SELECT d.key, d.type, d.source, d.row, d.reason, d.key IN (SELECT key FROM p) AS pending "
            "FROM dropped d ANTI JOIN q ON q.source = d.source AND q.row = d.row ORDER BY d.key"
        ).to_arrow_table()
    finally:
        con.close()
    n = had_output.num_rows
    null = pa.nulls(n)
    quarantine = pa.table({"source": had_output.column("source"), "row": had_output.column("row"),
                           "subject_id": null.cast(pa.int64()), "time": null.cast(pa.timestamp("us")),
                           "code": null.cast(pa.string()), "reason": had_output.column("reason")},
                          schema=QUARANTINE_SCHEMA)
    pending_n = pc.sum(had_output.column("pending")).as_py() or 0
    by_type = {r["values"]: r["counts"] for r in pc.value_counts(had_output.column("type")).to_pylist()}
    out_keys = had_output.filter(pc.invert(had_output.column("pending"))).column("key").combine_chunks()
    _drop_events(work, events_dir, out_keys)
    return Duplicates(dropped=dropped.column("key").combine_chunks(), quarantine=quarantine, by_type=by_type,
                      out=n - pending_n, pending=pending_n)


def _drop_events(work: Path, events_dir: Path, keys: pa.Array) -> None:
    """Rewrite the event shards of the parts holding ``keys`` without those resources' rows."""
    if not len(keys):
        return
    parts = set(pc.shift_right(keys, 32).to_pylist())
    for part in sorted(parts):
        for kf in sorted(work.glob(f"eventkeys-{part:05d}-*.parquet")):
            ef = events_dir / ("part-" + kf.name[len("eventkeys-"):])
            shard_keys = pq.read_table(kf).column("key")
            drop = pc.is_in(shard_keys, value_set=keys)
            if not pc.any(drop).as_py() or pq.ParquetFile(ef).metadata.num_rows != len(shard_keys):
                continue                 # nothing of theirs here, or this shard was filtered already
            write_table(pq.read_table(ef).filter(pc.invert(drop)), ef)

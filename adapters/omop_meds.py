"""OMOP CDM -> MEDS 0.4 from the extraction's own pass (``extract --meds-out``), with or without an event directory.

MEDS only, from a DuckDB source (a DuckDB file, a CSV/Parquet folder): every table's events are staged in one
temporary table inside DuckDB, then sorted with the persons' rows subject range by subject range and streamed
once into the MEDS shards (SortedMeds); nothing goes through Python but the sorted batches. From a server
(PostgreSQL, ...), whose queries cannot see the persons written here, the streamed batches are spilled once (lz4,
by subject range) and sorted bucket by bucket (meds.EventTable). The persons and manifest of the run live in a
private folder that is removed; its quarantine goes to ``<meds_out>/quarantine.parquet``. With an event
directory too, the sort reads its shards (to_meds): writing the events twice would cost more than reading them
once.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from omop_behrt.adapters import meds
from omop_behrt.adapters.omop import ExtractOptions, ExtractSummary, _extract, _quarantine_rows
from omop_behrt.adapters.omop_visits import _distinct
from omop_behrt.adapters.omop_queries import EventTable, duplicate_counts, events_sql
from omop_behrt.db.cdm import OmopCdm
from omop_behrt.db.database import Database, arrow_reader, prefetch, quote, sql_literal
from omop_behrt.events import EventDir, fill_rebuilt_visits, writable_dir, write_table


def extract_meds(source: "str | Path | Database", out: str | Path | None, meds_out: str | Path,
                 cdm_schema: str | None, vocab_schema: str | None, results_schema: str | None,
                 options: ExtractOptions, resume: bool, batch_rows: int, rows_per_shard: int,
                 memory_limit: str | None, progress: bool) -> ExtractSummary:
    """Extraction whose events also (``out``) or only (``out=None``) become a MEDS dataset at ``meds_out``.

    MEDS only: one sorted query into the MEDS shards (DuckDB sources) or a spill sorted bucket by bucket
    (servers); no event shard is written or read. With ``out`` the event shards are written anyway, so the sort
    reads them (to_meds) rather than a second copy.
    """
    meds_out = writable_dir(meds_out, "the MEDS folder")
    if out is not None:
        summary = _extract(source, out, cdm_schema, vocab_schema, results_schema, options, resume, batch_rows,
                           rows_per_shard, memory_limit, progress)
        info = meds.to_meds(out, meds_out, Path(out).name, rows_per_shard, memory_limit)
        summary.meds = {**info, "path": str(meds_out)}
        return summary
    if resume:
        raise ValueError("extract --resume needs --out: a MEDS-only extraction keeps no event directory to "
                         "resume from")
    if options.notes:
        raise ValueError("extract --notes needs --out: clinical notes are kept in an event directory, "
                         "which MEDS holds no place for")
    # inside the MEDS folder, named like write_meds's own private folders: a killed run's is removed by the next
    work = meds.private_folder(meds_out, "-events")
    sink = MedsSink(work, meds_out, rows_per_shard, memory_limit)
    try:
        summary = _extract(source, work, cdm_schema, vocab_schema, results_schema, options, resume, batch_rows,
                           rows_per_shard, memory_limit, progress, sink=sink)
        ev = EventDir(work)
        if sink.sorted is not None:
            info = sink.sorted.publish(ev, meds_out.name)
        elif sink.complete:
            info = meds.write_meds(sink.spill.con, meds_out, persons=ev.persons(), descriptions=ev.descriptions(),
                                   observation_periods=ev.observation_periods(), manifest=ev.manifest,
                                   dataset_name=meds_out.name, rows_per_shard=rows_per_shard,
                                   parts=sink.spill.parts())
        else:       # Spark: the executors wrote event shards
            info = meds.to_meds(work, meds_out, meds_out.name, rows_per_shard, memory_limit)
        # the rows that could not become events, each with a reason, kept beside the dataset (nothing is lost)
        write_table(ev.quarantine(), meds_out / "quarantine.parquet")
        info["quarantine"] = str(meds_out / "quarantine.parquet")
    finally:
        sink.close()
        shutil.rmtree(work, ignore_errors=True)
    summary.meds = {**info, "path": str(meds_out)}
    return summary


class MedsSink:
    """Where ``_extract`` sends a MEDS-only extraction's events: :meth:`start` picks DuckDB's own staging and sort
    for a DuckDB source (:attr:`sorted`; then :attr:`fused` and :meth:`extract` takes every table at once) or
    the spill (:attr:`spill`, a meds.EventTable, fed batch by batch through :meth:`write`) for a server."""

    def __init__(self, work: Path, meds_out: Path, rows_per_shard: int, memory_limit: str | None):
        self.work, self.meds_out, self.rows_per_shard = work, meds_out, rows_per_shard
        self.spill = meds.EventTable(work / ".meds_spill", memory_limit)
        self.sorted: SortedMeds | None = None
        #: set by the extraction when every table's events came through this sink (not from Spark)
        self.complete = False

    def start(self, db: Database) -> None:
        if db.duck is not None:
            self.sorted = SortedMeds(self.meds_out, self.rows_per_shard)

    @property
    def fused(self) -> bool:
        """Whether the extraction hands over every table at once (:meth:`extract`) instead of batches."""
        return self.sorted is not None

    def extract(self, cdm: OmopCdm, specs: list[EventTable], options: ExtractOptions, out: EventDir,
                batch_rows: int, progress: bool, staged: tuple[str, str, str | None] | None) -> dict[str, dict]:
        assert self.sorted is not None
        return self.sorted.extract(cdm, specs, options, out, batch_rows, progress, staged)

    def plan(self, subject_ids: np.ndarray) -> None:
        if self.sorted is None:
            self.spill.plan(subject_ids)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.spill.write(batch)

    def code_concepts(self) -> pa.Table:
        return self.sorted.code_concepts() if self.sorted is not None else self.spill.code_concepts()

    def close(self) -> None:
        self.spill.close()
        if self.sorted is not None:
            self.sorted.close()


class SortedMeds:
    """A DuckDB source's MEDS without a round trip through Python: every table's events (bad rows included, with
    their reason) become one temporary table inside DuckDB, the person status and observation gaps their queries
    join made once; then subject range by subject range (about ROWS_PER_BUCKET events each, so the sort holds one
    range) the events and the persons' rows are sorted in the MEDS order and streamed once into the shards of a
    private folder that :meth:`publish` swaps in. Counts, notes and quarantine come from the same table."""

    #: events per subject range sorted at a time (DuckDB spills past its memory limit in any case)
    ROWS_PER_BUCKET = 2_000_000
    _EVENTS = "omop_behrt_events"
    #: the event columns staged: all but the domain (one per table) and the text value (null for every event)
    _STAGED = ["subject_id", "time", "code", "numeric_value"] + [c for c in meds._EXTRA
                                                                  if c not in ("domain", "text_value")]

    def __init__(self, meds_out: Path, rows_per_shard: int):
        self.meds_out = meds_out
        self.work = meds.private_folder(meds_out)
        self.shards = meds.MedsShards(self.work, rows_per_shard)
        self._visits: list[np.ndarray] = []
        self._domains: list[str] = []         # the domain of each staged part
        self._code_concepts = pa.table({"code": pa.array([], pa.string()),
                                        "concept_id": pa.array([], pa.int64())})

    def extract(self, cdm: OmopCdm, specs: list[EventTable], options: ExtractOptions, out: EventDir,
                batch_rows: int, progress: bool, staged: tuple[str, str, str | None] | None) -> dict[str, dict]:
        """Sort the tables ``specs`` and the persons of ``out`` into the MEDS shards; returns each table's part
        of the manifest (as _extract_table's) and writes its quarantine file. ``staged``: the joins made once
        (omop_staging.staged_joins)."""
        con = cdm.db.duck
        # without insertion order to keep DuckDB fills and sorts in parallel, and spills past its memory limit
        keep = bool(con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0])
        con.execute("SET preserve_insertion_order = false").fetchall()
        try:
            shared = self._stage(cdm, specs, options, staged)
            parts = self._counts(cdm, specs, out, shared)
            self._sort(cdm, out, batch_rows, progress)
        finally:
            con.execute(f"DROP TABLE IF EXISTS temp.{quote(self._EVENTS)}").fetchall()
            con.execute(f"SET preserve_insertion_order = {str(keep).lower()}").fetchall()
        self.shards.close()
        return parts

    def _stage(self, cdm: OmopCdm, specs: list[EventTable], options: ExtractOptions,
               staged: tuple[str, str, str | None] | None) -> dict[str, int]:
        """Every table's events in one temporary table, by one statement (column ``part``: the table's index in
        ``specs``); returns each table's rows sharing their id with another record.

        Only what varies by row is staged (DuckDB holds the table uncompressed: 16 bytes a string, null or not):
        the domain, one per table, and the null text value are added by :meth:`_sort`; the row key is kept for
        the bad rows only, the quarantine being its one reader."""
        shared = {}
        cols = ", ".join(self._STAGED)
        selects, params = [], {}
        for k, spec in enumerate(specs):
            duplicates, shared[spec.domain] = (duplicate_counts(cdm, spec) if options.check_duplicates
                                               else (0, 0))
            sql, p = events_sql(cdm, spec, options, duplicates=duplicates > 0, staged=staged)
            clash = [n for n in p if n in params and params[n] != p[n]]
            if clash:
                raise AssertionError(f"bind parameters {clash} differ between the tables' queries")
            params.update(p)
            selects.append(f"SELECT {cols}, CASE WHEN reason IS NOT NULL THEN row_key END AS row_key, reason, "
                           f"time_note, CAST(outside_op AS UTINYINT) AS outside_op, CAST({k} AS USMALLINT) AS part "
                           f"FROM ({sql}) e")
        if not selects:     # no table: the same columns, no row
            typed = {"subject_id": "NULL::BIGINT", "time": "NULL::TIMESTAMP", "numeric_value": "NULL::FLOAT"}
            nulls = ", ".join(f"{typed.get(c, 'NULL')} AS {c}" for c in self._STAGED)
            selects.append(f"SELECT {nulls}, NULL AS row_key, NULL AS reason, NULL AS time_note, "
                           f"NULL::UTINYINT AS outside_op, NULL::USMALLINT AS part WHERE FALSE")
        # one statement: DuckDB plans it once and fills it from every table at once (small tables in parallel)
        cdm.db.execute(f"CREATE OR REPLACE TEMP TABLE {quote(self._EVENTS)} AS " + " UNION ALL ".join(selects),
                       params)
        self._domains = [spec.domain for spec in specs]
        return shared

    def _counts(self, cdm: OmopCdm, specs: list[EventTable], out: EventDir, shared: dict) -> dict[str, dict]:
        """Each table's counts, notes and quarantine file, from the staged events."""
        events = quote(self._EVENTS)
        counts = {int(r["part"]): r for r in cdm.db.query(
            f"SELECT part, COUNT(*) AS rows_in, COUNT(*) FILTER (WHERE reason IS NULL) AS rows_out, "
            f"COALESCE(SUM(outside_op) FILTER (WHERE reason IS NULL), 0) AS outside FROM {events} "
            f"GROUP BY part").to_pylist()}
        notes: dict[int, dict] = {}
        for r in cdm.db.query(f"SELECT part, time_note, COUNT(*) AS n FROM {events} WHERE reason IS NULL AND "
                              f"time_note IS NOT NULL GROUP BY ALL ORDER BY ALL").to_pylist():
            notes.setdefault(int(r["part"]), {})[r["time_note"]] = int(r["n"])
        bad = cdm.db.query(f"SELECT part, subject_id, time, code, row_key, reason FROM {events} "
                           f"WHERE reason IS NOT NULL ORDER BY part, subject_id, time, row_key, reason")
        part_of = bad.column("part").to_numpy(zero_copy_only=False)
        # the real visit ids the events carry (the rebuilt ones are gathered by _sort), for the summary's counts,
        # and the (code, concept) pairs codes.parquet describes
        good = f"{events} WHERE reason IS NULL"
        visits = [k for k, spec in enumerate(specs) if spec.domain == "visit"]
        self._visits.append(cdm.db.query(f"SELECT DISTINCT visit_id FROM {good} AND visit_id IS NOT NULL "
                                         f"AND part NOT IN ({', '.join(map(str, visits + [-1]))})"
                                         ).column(0).to_numpy())
        self._code_concepts = cdm.db.query(f"SELECT DISTINCT code, concept_id FROM {good} AND concept_id IS NOT "
                                           "NULL AND code NOT LIKE 'OMOP/%' ORDER BY 1, 2")
        parts = {}
        for k, spec in enumerate(specs):
            q = _quarantine_rows(bad, pa.array(part_of == k), spec.table)
            write_table(q, out.path / f"quarantine-{spec.table}.parquet")
            c = counts.get(k, {"rows_in": 0, "rows_out": 0, "outside": 0})
            parts[spec.domain] = {
                "rows_in": int(c["rows_in"]), "rows_out": int(c["rows_out"]), "quarantined": q.num_rows,
                "files": [], "notes": notes.get(k, {}), "shared_id_rows": shared[spec.domain],
                # a death after the last observation period is what death means
                "outside_observation": 0 if spec.domain == "death" else int(c["outside"])}
        return parts

    def _sort(self, cdm: OmopCdm, out: EventDir, batch_rows: int, progress: bool) -> None:
        """The good events and the persons' rows, subject range by subject range, sorted into the shards."""
        events = quote(self._EVENTS)
        total = int(cdm.db.scalar(f"SELECT COUNT(*) FROM {events} WHERE reason IS NULL"))
        k = min(64, max(1, -(-total // self.ROWS_PER_BUCKET)))
        cuts = []
        if k > 1:      # subject ids cutting the events into k ranges of about equal size
            fractions = ", ".join(str(i / k) for i in range(1, k))
            cuts = cdm.db.scalar(f"SELECT quantile_disc(subject_id, [{fractions}]) FROM {events} "
                                 f"WHERE reason IS NULL") or []
        edges = [None] + sorted(set(int(c) for c in cuts)) + [None]
        persons = f"read_parquet({sql_literal(str(out.path / 'persons.parquet'))})"
        domain = ("CASE part " + " ".join(f"WHEN {i} THEN {sql_literal(d)}" for i, d in enumerate(self._domains))
                  + " END") if self._domains else "NULL::VARCHAR"

        def ranges() -> Iterator[pa.RecordBatch]:
            for lo, hi in zip(edges[:-1], edges[1:]):
                where = " AND ".join([f"subject_id >= {lo}"] * (lo is not None)
                                     + [f"subject_id < {hi}"] * (hi is not None)) or "TRUE"
                people = meds.person_rows_sql(f"(SELECT * FROM {persons} WHERE {where})")
                yield from arrow_reader(cdm.db.duck.sql(
                    f"SELECT {meds.EVENT_COLUMNS_SQL} FROM (SELECT *, {domain} AS domain FROM {events} "
                    f" WHERE reason IS NULL AND {where}) UNION ALL {people} ORDER BY {meds.MEDS_ORDER}"),
                    batch_rows)

        with tqdm(total=total, desc="sort into MEDS", unit="event", unit_scale=True, disable=not progress,
                  leave=False) as bar:
            # DuckDB sorts the next range (in its own thread) while this one writes the last range's batches
            last = None
            for batch in prefetch(ranges()):
                had = pc.is_valid(batch.column("visit_id"))
                batch = fill_rebuilt_visits(batch)
                # the ids it rebuilt; a (subject, day)'s rows are adjacent (sorted by subject and time): keep the
                # id where it starts
                ids = batch.column("visit_id").filter(pc.and_(pc.invert(had), pc.is_valid(batch.column("visit_id"))))
                ids = ids.to_numpy(zero_copy_only=False)
                if len(ids):
                    starts = np.concatenate([[ids[0] != last], ids[1:] != ids[:-1]])
                    self._visits.append(ids[starts])
                    last = ids[-1]
                self.shards.write(batch)
                bar.update(batch.num_rows)
        state = out.path / ".state"
        state.mkdir(exist_ok=True)
        # sorted and distinct, as every visits file (omop_visits._visit_counts merges them range by range)
        np.save(state / "visits-meds.npy", _distinct(np.concatenate(self._visits).astype(np.int64)))

    def code_concepts(self) -> pa.Table:
        """Distinct (code, concept_id) of the events with a concept (what codes.parquet describes)."""
        return self._code_concepts

    def publish(self, ev: EventDir, dataset_name: str) -> dict:
        """Write the metadata beside the shards and swap the dataset into the MEDS folder; returns its counts."""
        meds.write_metadata(self.work, self.shards.codes, ev.descriptions(), ev.observation_periods(),
                            ev.manifest, dataset_name)
        meds.swap_in(self.work, self.meds_out)
        return self.shards.info

    def close(self) -> None:
        self.shards.close()
        shutil.rmtree(self.work, ignore_errors=True)

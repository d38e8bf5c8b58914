"""Mapping an event stream to tokens with a vocabulary: :func:`map_events` and its coverage report.

The vocabulary (:mod:`omop_behrt.vocab.registry`) maps the distinct codes (keys) of the events; here that small
mapping is joined back onto the events in DuckDB (``sql/vocab/tokens.sql``, one vectorised join) and the tokens
come back in memory or as Parquet shards, sorted as the caller needs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from omop_behrt.db.database import Database, arrow_reader, load_sql, quiet
from omop_behrt.events import EVENTS_SCHEMA, EventDir, ShardWriter, conform
from omop_behrt.vocab.registry import (KEYS_SCHEMA, MAPPING_SCHEMA, TOKENS_SCHEMA, MapContext, Vocabulary,
                                       VocabularyError, get_vocabulary)


@dataclass
class MapResult:
    """The tokens (in memory, or the folder they were written to) and the coverage report."""

    tokens: pa.Table | None
    path: Path | None
    report: Any                    # omop_behrt.vocab.coverage.CoverageReport
    vocab: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _events_relation(con, events: "EventDir | str | Path | pa.Table", subjects: Any = None):
    """Register the events as the view ``events`` (Parquet read lazily by DuckDB, or an Arrow table); with
    ``subjects``, only theirs (a semi-join inside DuckDB: the rest of the directory is never mapped)."""
    name = "events" if subjects is None else "all_events"
    if isinstance(events, pa.Table):
        missing = [f.name for f in EVENTS_SCHEMA if f.name not in events.column_names
                   and f.name in ("subject_id", "time", "code", "domain")]
        if missing:
            raise VocabularyError(f"events table: missing column(s) {missing}")
        events = conform(events, EVENTS_SCHEMA, "events table")
        con.register(name, events)
        n = events.num_rows
    else:
        d = events if isinstance(events, EventDir) else EventDir.open(events)
        files = [str(f) for f in d.event_files()]
        if not files:
            raise VocabularyError(f"{d.path}: the event directory has no events/*.parquet files")
        con.read_parquet(files).create_view(name)
        n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if subjects is None:
        return n
    con.register("wanted_subjects", pa.table({"subject_id": pa.array(subjects, pa.int64())}))
    con.execute("CREATE TEMP VIEW events AS SELECT * FROM all_events "
                "WHERE subject_id IN (SELECT subject_id FROM wanted_subjects)").fetchall()
    return con.execute("SELECT COUNT(*) FROM events").fetchall()[0][0]


def _write_shards(rel: Any, path: Path, rows_per_shard: int, progress: bool, label: str,
                  schema: pa.Schema = TOKENS_SCHEMA) -> tuple[Path, int]:
    """Stream a query's tokens into ``path/part-*.parquet`` (old shards removed first; each shard atomic)."""
    from tqdm.auto import tqdm
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("part-*.parquet*"):
        old.unlink()
    writer = ShardWriter(path, "part", schema, rows_per_shard)
    with tqdm(desc=f"map {label[:40]}", unit="token", unit_scale=True, disable=not progress, leave=False) as bar:
        for batch in arrow_reader(rel, min(1_000_000, rows_per_shard)):
            writer.write(batch.cast(schema))
            bar.update(batch.num_rows)
    writer.close()
    return path, writer.rows


def map_events(events: "EventDir | str | Path | pa.Table", vocab: "str | Vocabulary" = "source", *,
               cdm: Any = None, out: str | Path | None = None, progress: bool = True, sort: bool | str = True,
               top_unmapped: int = 20, threads: int | None = None, memory_limit: str | None = None,
               rows_per_shard: int = 5_000_000, infer_icd: bool = True, min_count: int = 10,
               show_rare_codes: bool = False, subjects: Any = None,
               columns: Sequence[str] | None = None) -> MapResult:
    """Map an event stream to tokens with ``vocab`` (name, spec string or Vocabulary) and report coverage.

    ``cdm`` (a DuckDB file, URL, folder or OmopCdm) lends its vocabulary tables to ``concept``, ``ancestor``,
    ``caliber`` (Athena SNOMED<->ICD10 links) and ``drop(tag=...)``. With ``out`` the tokens are written as
    Parquet shards to ``out/tokens/part-*.parquet`` and ``tokens`` is None; otherwise they come back in
    memory. ``sort`` orders tokens by subject_id, time, visit_id, then domain, code (and the rest of the
    code's key) and token, so the same data always gives the same token stream; ``"subject"`` by subject_id
    only (a subject range then lies in few row groups: what readers by range need, at a fraction of the cost);
    False not at all.

    ``infer_icd``: codes that arrive without a vocabulary (``SOURCE_CONDITION/4019``) are read as ICD-9-CM or
    ICD-10-CM from their shape before mapping (:mod:`omop_behrt.vocab.icd`); the events keep them as they came.
    ``min_count`` / ``show_rare_codes``: what the report's shareable forms (``table()``, ``as_dict()``,
    ``write_json``) leave out: codes seen in fewer than ``min_count`` persons and counts below it, unless
    ``show_rare_codes`` (the output then identifies rare conditions of individual patients). ``subjects``
    (subject ids): map only these persons' events (what an embedding of a cohort needs). ``columns``: the
    token columns kept (default all of TOKENS_SCHEMA's; pretraining and embedding read four, and the ones
    dropped are never sorted or written).
    """
    import duckdb

    from omop_behrt.vocab.coverage import CoverageReport
    if sort not in (True, False, "subject"):
        raise ValueError(f"sort must be True, False or 'subject'; got {sort!r}")
    columns = list(TOKENS_SCHEMA.names if columns is None else columns)
    if not columns or set(columns) - set(TOKENS_SCHEMA.names) or len(set(columns)) < len(columns):
        raise ValueError(f"columns must be distinct names among {TOKENS_SCHEMA.names}; got {columns}")
    schema = pa.schema([TOKENS_SCHEMA.field(c) for c in columns])
    t0 = time.perf_counter()
    v = get_vocabulary(vocab)
    owned = cdm is not None and not hasattr(cdm, "qtable")
    if owned:
        from omop_behrt.db.cdm import OmopCdm
        cdm = OmopCdm(cdm)
    con = quiet(duckdb.connect())
    try:
        Database(duck=con).limit_memory(memory_limit or None, threads=threads or None)
        n_events = _events_relation(con, events, subjects)
        ctx = MapContext(con, cdm)
        keys = con.sql(load_sql("vocab/keys.sql")).to_arrow_table().cast(KEYS_SCHEMA)
        inferred = None
        if infer_icd:   # the vocabularies see ICD9CM/ICD10CM; tokens.sql joins the events on the keys as they came
            from omop_behrt.vocab.icd import infer_icd as read_icd
            mkeys, inferred = read_icd(keys, ctx)
        else:
            mkeys = keys
        mapping, who = v.map_keys_by_member(mkeys, ctx)
        mapping = ctx.sql("SELECT DISTINCT key_id, token FROM m", m=mapping).cast(MAPPING_SCHEMA)
        con.register("keys", keys)
        con.register("mapping", mapping)
        order = {True: "ORDER BY subject_id, time, visit_id, key_id, tok_rank",
                 "subject": "ORDER BY subject_id"}.get(sort, "")
        rel = con.sql(f"SELECT {', '.join(columns)} FROM ({load_sql('vocab/tokens.sql')}) t {order}")
        tokens, path = None, None
        if out is None:
            tokens = rel.to_arrow_table().cast(schema)
            n_tokens = tokens.num_rows
        else:
            path, n_tokens = _write_shards(rel, Path(out) / "tokens", rows_per_shard, progress, v.spec(), schema)
        if cdm is not None:
            for w in getattr(cdm, "warnings", []):
                ctx.warn(w)
        report = CoverageReport.from_mapping(ctx, keys, mapping, who, vocab=v.spec(), n_tokens=n_tokens,
                                             top=top_unmapped, inferred=inferred, min_count=min_count,
                                             show_rare_codes=show_rare_codes)
    finally:
        con.close()
        if owned:
            cdm.db.close()
    seconds = time.perf_counter() - t0
    report.seconds = round(seconds, 3)
    return MapResult(tokens=tokens, path=path, report=report, vocab=v.spec(), seconds=seconds,
                     extra={"events_read": n_events})

"""OMOP CDM 5.3 / 5.4 -> the canonical event stream, with the SQL running inside the CDM's database.

Works on a DuckDB file, any SQLAlchemy URL (PostgreSQL tested) or a folder of CSV/Parquet table exports.
Column names may be in any case (Eunomia's are UPPER-CASE): every column is looked up in the database's
catalogue and quoted as stored. The SQL is in ``sql/omop/`` (rendered by omop_queries); this module runs it
table by table, splits good rows from quarantined ones, counts what was noted, and makes a run resumable.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from omop_behrt.db.cdm import OmopCdm
from omop_behrt.tasks.cohorts import RESULTS_SCHEMA, CohortTable
from omop_behrt.db.database import Database, SourceError, load_sql, render
from omop_behrt.events import (CODE_DESCRIPTIONS_SCHEMA, EVENTS_SCHEMA, NOTES_SCHEMA, OBSERVATION_PERIODS_SCHEMA,
                      PERSONS_SCHEMA, QUARANTINE_SCHEMA, EventDir, ShardWriter, extracting, fill_rebuilt_visits,
                      writable_dir, write_table)
from omop_behrt.adapters.omop_resume import _check_resume, _remove_partial, fingerprint, index_dates_digest  # noqa: F401
from omop_behrt.adapters.omop_queries import (DOMAINS, EVENT_TABLES, REQUIRED_TABLES, VALID_END, VALID_START,
                                              EventTable, ExtractOptions, ExtractSummary, duplicate_counts,
                                              events_sql, notes_sql, observation_periods_sql, persons_sql)
from omop_behrt.adapters.omop_staging import staged_joins
from omop_behrt.adapters.omop_visits import _distinct, _visit_counts

__all__ = ["extract", "ExtractOptions", "ExtractSummary", "EventTable", "EVENT_TABLES", "DOMAINS",
           "VALID_START", "VALID_END", "fingerprint"]

OUTSIDE_OBSERVATION = "events outside every observation_period of their person (kept)"
SHARED_IDS = "rows whose row id another record (other person, date or code) also uses (kept: an id collision)"


_EVENT_COLUMNS = [f.name for f in EVENTS_SCHEMA]


def _query_schema(schema: pa.Schema, *extra: pa.Field) -> pa.Schema:
    """The contract's schema with every column nullable (bad rows still arrive) plus the query's own columns."""
    return pa.schema([f.with_nullable(True) for f in schema] + list(extra))


def _s(name: str) -> pa.Field:
    return pa.field(name, pa.string())


_QUERY_SCHEMA = _query_schema(EVENTS_SCHEMA, _s("row_key"), _s("reason"), _s("time_note"),
                              pa.field("outside_op", pa.int32()))
_PERSON_QUERY_SCHEMA = _query_schema(PERSONS_SCHEMA, _s("row_key"), _s("reason"), _s("birth_note"),
                                     _s("death_note"))
_OP_QUERY_SCHEMA = _query_schema(OBSERVATION_PERIODS_SCHEMA, _s("row_key"), _s("reason"))
_NOTE_QUERY_SCHEMA = _query_schema(NOTES_SCHEMA, _s("row_key"), _s("reason"))


def _quarantine_rows(batch: pa.RecordBatch | pa.Table, mask, source: str, with_code: bool = True) -> pa.Table:
    bad = batch.filter(mask)
    n = bad.num_rows
    return pa.table({
        "source": pa.array([source] * n, pa.string()),
        "row": bad.column("row_key") if "row_key" in bad.column_names else pa.nulls(n, pa.string()),
        "subject_id": bad.column("subject_id"),
        "time": bad.column("time") if "time" in bad.column_names else pa.nulls(n, pa.timestamp("us")),
        "code": bad.column("code") if with_code and "code" in bad.column_names else pa.nulls(n, pa.string()),
        "reason": bad.column("reason"),
    }, schema=QUARANTINE_SCHEMA)


def _count_values(column, into: dict) -> None:
    """Add the non-null values of a column to ``into`` (vectorised value counts)."""
    if column.null_count == len(column):
        return
    for r in pc.value_counts(pc.drop_null(column)).to_pylist():
        into[r["values"]] = into.get(r["values"], 0) + r["counts"]


def _no_person_error(cdm: OmopCdm, options: ExtractOptions) -> SourceError:
    """The error for filters that match no person, naming the filter."""
    if options.person_ids is not None:
        what = f"none of the {len(set(options.person_ids))} --person-ids is in the person table"
    elif options.cohort_id is not None:
        what = (f"cohort {options.cohort_id} of {cdm.results_schema}.{options.cohort_table} has no subject in "
                f"the person table")
    elif options.index_dates is not None:
        what = "no subject of the index dates is in the person table"
    else:
        what = "the person table is empty"
    return SourceError(f"{cdm.db.description}: {what}, so nothing would be extracted; check the filter, or "
                       f"pass --allow-empty to write an empty event directory")


def _open_cdm(source, cdm_schema, vocab_schema, results_schema) -> OmopCdm:
    """Open the CDM and check what every extraction needs before any query runs."""
    cdm = OmopCdm(source, cdm_schema, vocab_schema, results_schema or RESULTS_SCHEMA)
    for table in REQUIRED_TABLES:
        try:
            cdm.require(table)
        except SourceError as e:
            raise SourceError(f"{e}; every extraction reads {', '.join(REQUIRED_TABLES)}, whatever --domains"
                              ) from None
    return cdm


def extract(source: "str | Path | Database", out: str | Path | None, *, cdm_schema: str | None = None,
            vocab_schema: str | None = None, results_schema: str | None = None,
            options: ExtractOptions | None = None, resume: bool = False, batch_rows: int = 500_000,
            rows_per_shard: int = 5_000_000, memory_limit: str | None = "2GB",
            progress: bool = True, meds_out: str | Path | None = None) -> ExtractSummary:
    """Read an OMOP CDM into an event directory at ``out`` and return what was read and written.

    ``meds_out``: also write the events as a MEDS dataset there, in the same pass (the streamed batches go into
    a DuckDB table that is sorted once into MEDS shards; nothing is read back); ``out=None`` then keeps no event
    directory (a private one beside the MEDS data holds the persons and the quarantine, and is removed).

    Each table is one streamed query; a finished table is recorded in the manifest with a fingerprint of the
    inputs, so ``resume=True`` skips it after an interruption (and refuses a run made from other inputs).
    Bad rows go to quarantine with a reason; a clinical table absent from the source is skipped and recorded.
    ``memory_limit`` bounds an in-process DuckDB source (it spills to ``out/.duckdb_tmp``); a server's own
    settings govern a SQLAlchemy source.
    """
    try:
        if meds_out is None:
            if out is None:
                raise ValueError("extract: give an event directory (out), a MEDS folder (meds_out), or both")
            return _extract(source, out, cdm_schema, vocab_schema, results_schema, options or ExtractOptions(),
                            resume, batch_rows, rows_per_shard, memory_limit, progress)
        from omop_behrt.adapters.omop_meds import extract_meds
        return extract_meds(source, out, meds_out, cdm_schema, vocab_schema, results_schema,
                            options or ExtractOptions(), resume, batch_rows, rows_per_shard, memory_limit, progress)
    except Exception as e:
        if _interrupted(e):          # DuckDB turns Ctrl-C during a query into its own error
            raise KeyboardInterrupt from None
        raise


def _interrupted(e: Exception) -> bool:
    """Whether an error is the database reporting that Ctrl-C interrupted its query."""
    try:
        import duckdb
        if isinstance(e, duckdb.InterruptException):
            return True
    except ImportError:
        pass
    return isinstance(e, RuntimeError) and str(e).strip() == "Query interrupted"


def _extract(source, out, cdm_schema, vocab_schema, results_schema, options: ExtractOptions, resume: bool,
             batch_rows: int, rows_per_shard: int, memory_limit: str | None, progress: bool,
             sink=None) -> ExtractSummary:
    """The extraction itself; :func:`extract` only turns a database's Ctrl-C error into KeyboardInterrupt.

    ``sink`` (omop_meds.MedsSink) receives the events instead of event shards (not from Spark, whose executors
    write the shards): every table at once when it is ``fused`` (sorted inside DuckDB), else batch by batch.
    """
    t0 = time.perf_counter()
    options.check()
    out = writable_dir(out)                      # a read-only or misplaced --out fails before the source is read
    with extracting(out):                        # one extraction writes an event directory at a time
        return _extract_held(source, EventDir(out), cdm_schema, vocab_schema, results_schema, options, resume,
                             batch_rows, rows_per_shard, memory_limit, progress, sink, t0)


def _extract_held(source, out: EventDir, cdm_schema, vocab_schema, results_schema, options: ExtractOptions,
                  resume: bool, batch_rows: int, rows_per_shard: int, memory_limit: str | None, progress: bool,
                  sink, t0: float) -> ExtractSummary:
    """:func:`_extract` once it holds the event directory."""
    domains = list(options.domains or DOMAINS)
    cdm = _open_cdm(source, cdm_schema, vocab_schema, results_schema)
    if options.cohort_id is not None:            # a missing cohort table is no domain's fault: said on its own
        CohortTable(cdm.db, cdm.results_schema, options.cohort_table).resolve(("cohort_definition_id", "subject_id"))
    for d in domains:                            # a present table with a broken schema fails before any work
        if cdm.has_table(EVENT_TABLES[d].table):
            try:
                events_sql(cdm, EVENT_TABLES[d], options)
            except SourceError as e:
                rest = ",".join(x for x in domains if x != d)
                raise SourceError(f"{e}; to extract the other domains: --domains {rest}") from None

    manifest = out.manifest if resume else {}
    now = fingerprint(cdm, options)
    if resume and manifest:
        _check_resume(out, manifest, now)
    done: dict = manifest.setdefault("parts", {})
    summary = ExtractSummary(source=cdm.db.description, cdm_version=cdm.cdm_version)
    spark = cdm.db.dialect == "spark"
    if spark:
        from omop_behrt.adapters import omop_spark
    if spark:
        sink = None
    elif sink is not None:
        sink.start(cdm.db)
    cdm.db.limit_memory(memory_limit, out.path / ".duckdb_tmp")

    # persons and observation periods: small, one query each; an empty selection stops before anything is written
    if "persons" not in done:
        staged = None
        if spark:      # the executors write persons and periods into a staging folder; nothing comes back
            staged = omop_spark.stage_persons(cdm, options, out)
            if staged.persons == 0 and not options.allow_empty:
                staged.discard()
                raise _no_person_error(cdm, options)
        else:
            sql, params = persons_sql(cdm, options)
            persons = cdm.db.query(sql, params, _PERSON_QUERY_SCHEMA)
            if persons.num_rows == 0 and not options.allow_empty:
                raise _no_person_error(cdm, options)
            sql, params = observation_periods_sql(cdm, options)
            ops = cdm.db.query(sql, params, _OP_QUERY_SCHEMA)
        if not resume:
            for old in (list(out.events_dir.glob("*.parquet*")) + list(out.path.glob("quarantine*.parquet*"))
                        + list(out.path.glob(".state/visits-*.npy"))):
                old.unlink()
        manifest.update({"source": cdm.db.description, "adapter": "omop", "cdm_version": cdm.cdm_version,
                         "vocabulary_version": cdm.vocabulary_version, "cdm_schema": cdm.cdm_schema,
                         "vocab_schema": cdm.vocab_schema, "fingerprint": now, "filters": _filters_record(options)})
        out.manifest = manifest
        if staged is not None:
            done["persons"] = staged.commit()
            out.write_manifest()
    if "persons" not in done:
        ok = pc.is_null(persons.column("reason"))
        write_table(persons.filter(ok).select(PERSONS_SCHEMA.names).cast(PERSONS_SCHEMA).sort_by("subject_id"),
                    out.path / "persons.parquet")          # sorted: the same bytes whatever order the database returns
        write_table(_quarantine_rows(persons, pc.invert(ok), "person", with_code=False),
                    out.path / "quarantine-person.parquet")
        notes: dict = {}
        good = persons.filter(ok)
        _count_values(good.column("birth_note"), notes)
        _count_values(good.column("death_note"), notes)
        ok = pc.is_null(ops.column("reason"))
        write_table(ops.filter(ok).select(OBSERVATION_PERIODS_SCHEMA.names).cast(OBSERVATION_PERIODS_SCHEMA),
                    out.path / "observation_periods.parquet")
        write_table(_quarantine_rows(ops, pc.invert(ok), "observation_period", with_code=False),
                    out.path / "quarantine-observation_period.parquet")
        missing = []
        if options.person_ids is not None:
            ids = pa.array(sorted(set(int(x) for x in options.person_ids)), pa.int64())
            missing = pc.filter(ids, pc.invert(pc.is_in(ids, persons.column("subject_id")))).to_pylist()
        done["persons"] = {"rows_in": persons.num_rows + ops.num_rows, "notes": notes,
                           "person_ids_not_found": len(missing)}
        out.write_manifest()

    if sink is None:                # an event directory even when no table of --domains is there to fill it
        out.events_dir.mkdir(exist_ok=True)
    else:                           # buckets of subjects for the MEDS sort
        sink.plan(out.persons()["subject_id"].to_numpy())
    skipped: dict = manifest.setdefault("skipped", {})
    todo = []
    for d in domains:
        spec = EVENT_TABLES[d]
        if d in done:
            continue
        if not cdm.has_table(spec.table):
            skipped[d] = (f"table {spec.table} absent" if not cdm.in_catalogue(spec.table)
                          else f"table {spec.table} has no CDM columns")
            out.write_manifest()
            continue
        skipped.pop(d, None)
        todo.append(spec)
    with staged_joins(cdm, options, bool(todo) and not spark, todo) as staged:
        if sink is not None and sink.fused:     # MEDS from DuckDB: every table sorted inside DuckDB
            done.update(sink.extract(cdm, todo, options, out, batch_rows, progress, staged))
            out.write_manifest()
        else:
            for spec in todo:
                done[spec.domain] = (omop_spark.extract_table(cdm, spec, options, out, rows_per_shard) if spark
                                     else _extract_table(cdm, spec, options, out, batch_rows, rows_per_shard,
                                                         progress, sink, staged))
                out.write_manifest()
    if sink is not None:
        sink.complete = True

    if options.notes and "note" not in done:
        done["note"] = _extract_notes(cdm, options, out, batch_rows, progress, skipped)
        out.write_manifest()
    write_descriptions(cdm, out, None if sink is None else sink.code_concepts())

    summary.skipped_files = list(getattr(cdm.db, "skipped_files", []) or [])
    listed = {f"{cdm.db.description}: file {f['file']} not read: {f['reason']}" for f in summary.skipped_files}
    summary.warnings = [w for w in cdm.warnings if w not in listed]     # the skipped files have their own line
    manifest["skipped_files"] = summary.skipped_files
    _fill_counts(out, summary)
    summary.seconds = round(time.perf_counter() - t0, 3)
    manifest["summary"] = summary.as_dict()
    out.write_manifest()
    return summary


def _filters_record(options: ExtractOptions) -> dict:
    """The options as the manifest shows them (index dates as a count)."""
    return {k: (list(v) if isinstance(v, (list, tuple)) else
                f"{v.num_rows} index dates" if isinstance(v, pa.Table) else v)
            for k, v in options.__dict__.items() if v is not None and not k.startswith("_")}


def _extract_table(cdm: OmopCdm, spec: EventTable, options: ExtractOptions, out: EventDir, batch_rows: int,
                   rows_per_shard: int, progress: bool, sink=None,
                   staged: tuple[str, str, str | None] | None = None) -> dict:
    """Stream one clinical table into event shards (or ``sink``) and its quarantine file; return its part."""
    _remove_partial(out, spec.table)
    duplicates, shared_ids = duplicate_counts(cdm, spec) if options.check_duplicates else (0, 0)
    sql, params = events_sql(cdm, spec, options, duplicates=duplicates > 0, staged=staged)
    total = cdm.db.scalar(f"SELECT COUNT(*) FROM {cdm.qtable(spec.table)}") if cdm.db.cheap_count else None
    writer = ShardWriter(out.events_dir, spec.table, EVENTS_SCHEMA, rows_per_shard) if sink is None else sink
    quarantine: list[pa.Table] = []
    visit_ids: list[np.ndarray] = []      # distinct visit ids per batch, for the summary's visit counts
    notes: dict = {}
    rows_in = rows_out = outside = 0
    with tqdm(total=total, desc=f"extract {spec.table}", unit="row", unit_scale=True,
              disable=not progress, leave=False) as bar:
        for batch in cdm.db.stream(sql, params, _QUERY_SCHEMA, batch_rows):
            rows_in += batch.num_rows
            batch = fill_rebuilt_visits(batch)
            ok = pc.is_null(batch.column("reason"))
            good = batch if pc.all(ok).as_py() else batch.filter(ok)
            events = good.select(_EVENT_COLUMNS).cast(EVENTS_SCHEMA)
            rows_out += events.num_rows
            writer.write(events)
            if good.num_rows < batch.num_rows:
                quarantine.append(_quarantine_rows(batch, pc.invert(ok), spec.table))
            _count_values(good.column("time_note"), notes)
            if spec.domain != "death":      # a death after the last observation period is what death means
                outside += pc.sum(good.column("outside_op")).as_py() or 0
            v = good.column("visit_id").to_numpy(zero_copy_only=False)
            visit_ids.append(_distinct(v if spec.domain != "visit" else v[:0]))
            bar.update(batch.num_rows)
    files = writer.close() if sink is None else []
    q = pa.concat_tables(quarantine) if quarantine else QUARANTINE_SCHEMA.empty_table()
    write_table(q, out.path / f"quarantine-{spec.table}.parquet")
    state = out.path / ".state"
    state.mkdir(exist_ok=True)
    np.save(state / f"visits-{spec.table}.npy", _distinct(np.concatenate(visit_ids)) if visit_ids
            else np.zeros(0, np.int64))
    return {"rows_in": rows_in, "rows_out": rows_out, "quarantined": q.num_rows,
            "files": [f.name for f in files], "notes": notes, "outside_observation": outside,
            "shared_id_rows": shared_ids}


def _extract_notes(cdm: OmopCdm, options: ExtractOptions, out: EventDir, batch_rows: int, progress: bool,
                   skipped: dict) -> dict:
    """Stream the note table into notes/ shards (NOTES_SCHEMA) and its quarantine file; return its manifest part.

    The notes/ folder is made even when the CDM has no usable note table, so a reader can tell "asked, none
    there" (recorded in ``skipped``) from "not asked".
    """
    for old in out.notes_dir.glob("*.parquet"):
        old.unlink()
    out.notes_dir.mkdir(exist_ok=True)
    if not cdm.has_table("note") or "note_text" not in cdm.columns("note"):
        skipped["note"] = ("table note absent" if not cdm.in_catalogue("note") else
                           "table note has no CDM columns" if not cdm.has_table("note") else
                           "table note has no note_text column")
        return {"rows_in": 0, "rows_out": 0, "quarantined": 0, "files": []}
    skipped.pop("note", None)
    sql, params = notes_sql(cdm, options)
    writer = ShardWriter(out.notes_dir, "note", NOTES_SCHEMA)
    quarantine: list[pa.Table] = []
    rows_in = 0
    with tqdm(desc="extract note", unit="note", unit_scale=True, disable=not progress, leave=False) as bar:
        for batch in cdm.db.stream(sql, params, _NOTE_QUERY_SCHEMA, batch_rows):
            rows_in += batch.num_rows
            ok = pc.is_null(batch.column("reason"))
            writer.write(batch.filter(ok).select(NOTES_SCHEMA.names).cast(NOTES_SCHEMA))
            if not pc.all(ok).as_py():
                quarantine.append(_quarantine_rows(batch, pc.invert(ok), "note", with_code=False))
            bar.update(batch.num_rows)
    writer.close()
    q = pa.concat_tables(quarantine) if quarantine else QUARANTINE_SCHEMA.empty_table()
    write_table(q, out.path / "quarantine-note.parquet")
    return {"rows_in": rows_in, "rows_out": writer.rows, "quarantined": q.num_rows,
            "files": [f.name for f in writer.files]}


def write_descriptions(cdm: OmopCdm, out: EventDir, pairs: pa.Table | None = None) -> None:
    """codes.parquet: the concept_name of every code the events hold by a known concept, for the text serialiser.

    ``pairs``: the events' distinct (code, concept_id) when known already (a MEDS extraction), else read from
    the event shards.
    """
    import duckdb
    files = [str(f) for f in out.event_files()] if pairs is None else []
    if pairs is None:
        pairs = pa.table({"code": pa.array([], pa.string()), "concept_id": pa.array([], pa.int64())})
    if files:
        con = duckdb.connect()
        try:
            pairs = con.sql("SELECT DISTINCT code, concept_id FROM read_parquet($files) WHERE concept_id IS NOT NULL "
                            "AND code NOT LIKE 'OMOP/%' ORDER BY 1, 2", params={"files": files}).to_arrow_table()
        finally:
            con.close()
    names = CODE_DESCRIPTIONS_SCHEMA.empty_table()
    if pairs.num_rows and cdm.has_table("concept") and "concept_name" in cdm.columns("concept"):
        sql = render(load_sql("omop/concept_names_by_id.sql"), {
            "concept": cdm.qtable("concept"), "c_name": cdm.col("concept", "concept_name", "c"),
            "c_concept_id": cdm.col("concept", "concept_id", "c")})
        got = cdm.db.query(sql, {"ids": pc.unique(pairs["concept_id"]).to_pylist()})
        joined = pairs.join(got, "concept_id", join_type="inner")
        text = pc.utf8_trim_whitespace(pc.replace_substring_regex(joined["name"].cast(pa.string()), r"\s+", " "))
        names = pa.table({"code": joined["code"], "description": text})
        names = names.filter(pc.fill_null(pc.greater(pc.utf8_length(names["description"]), 0), False))
        # one description per code (a code shared by two concept ids keeps the smallest name)
        names = names.group_by("code").aggregate([("description", "min")]).rename_columns(["code", "description"])
        names = names.sort_by("code").cast(CODE_DESCRIPTIONS_SCHEMA)
    write_table(names, out.path / "codes.parquet")


_QUOTED = re.compile(r"'([^']*)'")
_SHAPE = str.maketrans("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                       "9" * 10 + "a" * 26 + "A" * 26)


def reason_shape(reason: str) -> str:
    """A quarantine reason with each quoted value replaced by its shape (digits 9, letters a/A), for the summary:
    ``condition_start_date '07/05/2013' is not a date`` -> ``'99/99/9999'``. A column in another date format is
    then one line, not one per value, and the summary holds no value read from a person's row (the quarantine
    files keep the values, on site)."""
    return _QUOTED.sub(lambda m: "'" + m.group(1).translate(_SHAPE) + "'", reason) if "'" in reason else reason


def _fill_counts(out: EventDir, summary: ExtractSummary) -> None:
    """Totals over every finished table (a resumed run reports the whole extraction), without re-reading events.

    Real visits are the visit_occurrence rows written (each real visit is one visit event; other events only
    keep visit ids that join one) plus, when visits were not extracted, the distinct ids other events carry;
    rebuilt visits are the distinct negative ids over all tables.
    """
    all_parts = out.manifest.get("parts", {})
    parts = {k: v for k, v in all_parts.items() if k not in ("persons", "note")}
    if "note" in all_parts:
        n = all_parts["note"]
        summary.clinical_notes = {"read": n["rows_in"], "written": n["rows_out"], "quarantined": n["quarantined"]}
    summary.events_in = sum(v.get("rows_in", 0) for v in parts.values())
    summary.events_by_domain = {d: v["rows_out"] for d, v in parts.items() if v.get("rows_out")}
    summary.events_out = sum(summary.events_by_domain.values())
    summary.notes = {f"person: {k}": n for k, n in all_parts.get("persons", {}).get("notes", {}).items()}
    for d, v in parts.items():
        summary.notes.update({f"{EVENT_TABLES[d].table}: {k}": n for k, n in v.get("notes", {}).items()})
    outside = {d: v["outside_observation"] for d, v in parts.items() if v.get("outside_observation")}
    summary.checks = {OUTSIDE_OBSERVATION: outside} if outside else {}
    shared = {d: v["shared_id_rows"] for d, v in parts.items() if v.get("shared_id_rows")}
    if shared:
        summary.checks[SHARED_IDS] = shared
    summary.skipped = dict(out.manifest.get("skipped", {}))
    not_found = all_parts.get("persons", {}).get("person_ids_not_found", 0)
    if not_found:
        summary.warnings.append(f"{not_found} of the --person-ids are not in the person table")
    rebuilt, real = _visit_counts(sorted((out.path / ".state").glob("visits-*.npy")))
    summary.rebuilt_visits = rebuilt
    summary.visits = summary.events_by_domain.get("visit", 0) or real
    by_reason: dict[str, int] = {}
    for f in sorted(out.path.glob("quarantine*.parquet")):      # file by file: a messy site's can be large
        q = pq.read_table(f, columns=["source", "reason"])
        for r in q.group_by(["source", "reason"]).aggregate([("reason", "count")]).to_pylist():
            key = f"{r['source']}: {reason_shape(r['reason'])}"
            by_reason[key] = by_reason.get(key, 0) + r["reason_count"]
    summary.quarantined_by_reason = dict(sorted(by_reason.items()))
    summary.quarantined = sum(n for k, n in summary.quarantined_by_reason.items()
                              if not k.startswith(("person:", "observation_period:", "note:")))
    summary.persons = pq.ParquetFile(out.path / "persons.parquet").metadata.num_rows   # not the table: 1M rows
    shutil.rmtree(out.path / ".duckdb_tmp", ignore_errors=True)

"""FHIR R4 (R4B/R5 field names too) -> the canonical event stream, through SQL-on-FHIR v2 ViewDefinitions.

Reads Bundles and bulk-export NDJSON (adapters/fhir_reader.py), runs the views shipped in ``sql/fhir/`` (plus any
the user adds or overrides) on every resource (adapters/viewdefinition.py), and writes the same event directory
as the OMOP adapter. Input is split into parts (whole files; a large plain NDJSON file in line-aligned byte
ranges), run in up to ``workers`` processes
(adapters/fhir_part.py); a finished part is recorded in the manifest, so ``resume=True`` skips it. This module
starts the parts (adapters/fhir_pool.py: workers die with the run) and then settles the directory: repeated
resources (adapters/fhir_duplicates.py), persons, rows pending on a Patient, counts and the summary.

An event view yields rows with columns ``subject`` (a Patient reference), ``time``, ``domain`` and ``coding``
(a Coding; or ``system`` + ``code``), optionally ``encounter``, ``end_time``, ``value`` + ``unit`` or ``quantity``
(a Quantity: value, and unit = the UCUM code, else ``unit``, else ``code``), ``display`` (describes the code where
the Coding has no display: ``code.text``) and ``source_coding``; the ``patient`` view yields ``id``,
``birth_date``, ``gender``, ``deceased_time``, ``deceased``.

``codes.parquet`` (code, description): each code's most frequent Coding display (else ``display``), whitespace
collapsed, ties to the smallest; counted per part (``.fhir/codes-<part>.parquet``) and merged at the end.
``notes=True`` also writes the text attachments of DocumentReference / DiagnosticReport to ``notes/``
(adapters/fhir_notes.py).
"""
from __future__ import annotations

import importlib.util
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from omop_behrt.events import (CODE_DESCRIPTIONS_SCHEMA, EVENTS_SCHEMA, OBSERVATION_PERIODS_SCHEMA, PERSONS_SCHEMA,
                      QUARANTINE_SCHEMA, EventDir, ShardWriter, conform, extracting, write_table)
from omop_behrt.adapters.fhir_duplicates import settle
from omop_behrt.adapters.fhir_events import (DESCRIPTION_COUNTS_SCHEMA, PERSONS_PART_SCHEMA, EventBuffer,
                                             PersonBuffer, QuarantineBuffer, code_prefix, description_counts)
from omop_behrt.adapters.fhir_notes import clear_notes, notes_on_disk, settle_pending_notes
from omop_behrt.adapters.fhir_part import fhir_id, run_part
from omop_behrt.adapters.fhir_views import EVENT_COLUMNS, compile_parts, load_fhir_views
from omop_behrt.adapters.fhir_pool import run_parts
from omop_behrt.adapters.fhir_files import NotFhirError, has_fhir_name, input_files, is_fhir_source, is_ndjson
from omop_behrt.adapters.fhir_reader import ndjson_pieces, patient_ids, read_ndjson
from omop_behrt.adapters.fhir_resume import _check_resume, _fingerprint

__all__ = ["extract", "is_fhir_source", "has_fhir_name", "FhirExtractSummary", "load_fhir_views", "fhir_id",
           "NotFhirError", "EVENT_COLUMNS"]

_WORKERS = 8                     # default worker processes, at most (one per core below that)
_PART_BYTES = 48 << 20           # the most input per part (gzip counted 6x)
_MIN_PART_BYTES = 4 << 20        # parts are made smaller, down to this, so that the input makes >= _PARTS of them
_PARTS = max(8, 2 * (os.cpu_count() or 1))   # ... so that the workers share the work evenly (5 parts of 48 MB:
                                             # 3 rounds on 2 workers); 32 on 16 cores (5% more CPU on 2)
_AFTER_LINE = re.compile(r" (after line \d+|\(the Bundle cannot be read\))")


@dataclass
class FhirExtractSummary:
    """What a FHIR extraction read and wrote; printed by the CLI and stored in the manifest."""

    source: str
    files: int = 0
    persons: int = 0
    resources_read: int = 0
    resources_in: int = 0
    resources_out: int = 0
    quarantined: int = 0
    ignored_by_type: dict = field(default_factory=dict)
    resources_by_type: dict = field(default_factory=dict)
    events_out: int = 0
    events_by_domain: dict = field(default_factory=dict)
    quarantined_by_reason: dict = field(default_factory=dict)
    duplicates_by_type: dict = field(default_factory=dict)
    skipped_files: list = field(default_factory=list)
    unknown_code_systems: dict = field(default_factory=dict)
    visits: int = 0
    rebuilt_visits: int = 0
    validated: bool = False
    codes_described: int = 0          # rows of codes.parquet
    with_notes: bool = False          # extraction was asked for notes (the notes_* counts below)
    notes_in: int = 0                 # text attachments met (a DocumentReference without one counts once)
    notes_out: int = 0
    notes_quarantined: int = 0
    notes_skipped: int = 0
    notes_by_source: dict = field(default_factory=dict)
    notes_quarantined_by_reason: dict = field(default_factory=dict)
    notes_skipped_by_reason: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def resources_per_second(self) -> float:
        return self.resources_read / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> str:
        """A human-readable summary."""
        lines = [f"source        {self.source} (FHIR, {self.files:,} files{', validated' if self.validated else ''})",
                 f"persons       {self.persons:,}",
                 f"resources     {self.resources_in:,} in = {self.resources_out:,} out + {self.quarantined:,} "
                 f"quarantined ({self.resources_read:,} read, {sum(self.ignored_by_type.values()):,} of types "
                 f"without a view)"]
        for t, n in sorted(self.resources_by_type.items()):
            lines.append(f"  {t:<26}{n:>10,}")
        if self.ignored_by_type:
            lines.append("  ignored: " + ", ".join(f"{t} {n:,}" for t, n in sorted(self.ignored_by_type.items())))
        if self.duplicates_by_type:
            lines.append(f"duplicates    {sum(self.duplicates_by_type.values()):,} resources repeat a type/id "
                         f"(kept: latest meta.lastUpdated, then first read; the rest quarantined): "
                         + ", ".join(f"{t} {n:,}" for t, n in sorted(self.duplicates_by_type.items())))
        if self.skipped_files:
            why: dict[str, list[str]] = {}
            for f in self.skipped_files:
                why.setdefault(f["reason"], []).append(f["file"])
            lines.append(f"skipped       {len(self.skipped_files):,} files: " + "; ".join(
                f"{len(fs):,} {r} ({', '.join(fs[:5])}{', ...' if len(fs) > 5 else ''})" for r, fs in why.items()))
        lines.append(f"events        {self.events_out:,} written")
        for d, n in sorted(self.events_by_domain.items()):
            lines.append(f"  {d:<12}{n:>12,}")
        lines.append(f"visits        {self.visits:,} from Encounters, {self.rebuilt_visits:,} rebuilt from "
                     f"(person, day)")
        for r, n in sorted(self.quarantined_by_reason.items()):
            lines.append(f"  quarantined {n:>10,}  {r}")
        if self.with_notes:
            lines.append(f"notes         {self.notes_in:,} in = {self.notes_out:,} written + "
                         f"{self.notes_quarantined:,} quarantined + {self.notes_skipped:,} skipped"
                         + "".join(f", {t} {n:,}" for t, n in sorted(self.notes_by_source.items())))
            for r, n in sorted(self.notes_quarantined_by_reason.items()):
                lines.append(f"  quarantined {n:>10,}  {r}")
            for r, n in sorted(self.notes_skipped_by_reason.items()):
                lines.append(f"  skipped     {n:>10,}  {r}")
        lines.append(f"codes         {self.codes_described:,} with a description (codes.parquet)")
        for s, n in sorted(self.unknown_code_systems.items()):
            prefix = code_prefix(None if s == "(no system)" else s)
            lines.append(f"  unknown code system {s} ({n:,} events, prefix {prefix})")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        lines.append(f"time          {self.seconds:.1f} s ({self.resources_per_second:,.0f} resources/s)")
        return "\n".join(lines)


def _parts(files: list[Path], min_parts: int | None = None) -> list[list]:
    """The input as parts of at most ``_PART_BYTES``, at least ``min_parts`` (default ``_PARTS``) of them where
    the input is over ``min_parts * _MIN_PART_BYTES``. Small files are grouped whole; a plain NDJSON file larger
    than a part is cut into line-aligned byte ranges (``[path, start, end, first line]``, :func:`ndjson_pieces`),
    so that one large bulk-export file (a server's single Observation.ndjson) is read by every worker, not one.
    The split depends on the files and ``min_parts`` only (recorded in the fingerprint), so ``resume`` finds it
    again, on any machine."""
    sizes = [f.stat().st_size * (6 if f.name.endswith(".gz") else 1) for f in files]
    target = min(_PART_BYTES, max(_MIN_PART_BYTES, -(-sum(sizes) // (min_parts or _PARTS))))
    pieces: list[tuple[str | list, int]] = []
    for f, n in zip(files, sizes):
        if n > target and is_ndjson(f) and not f.name.endswith(".gz"):
            pieces += [([str(f), start, end, line], end - start) for start, end, line in ndjson_pieces(f, target)]
        else:
            pieces.append((str(f), n))
    parts, cur, size = [], [], 0
    for piece, n in pieces:
        if cur and size + n > target:
            parts.append(cur)
            cur, size = [], 0
        cur.append(piece)
        size += n
    if cur:
        parts.append(cur)
    return parts


def extract(source: str | Path, out: str | Path, *, validate: bool = False, views: str | Path | None = None,
            progress: bool = True, resume: bool = False, workers: int | None = None,
            notes: bool = False) -> FhirExtractSummary:
    """Read FHIR Bundles / bulk NDJSON at ``source`` into an event directory at ``out``; return the summary.

    ``views``: a folder of ViewDefinition JSON files adding to or replacing (by name) the packaged ones.
    ``validate``: also check every resource against fhir.resources' R4B models (slow); invalid ones are quarantined.
    ``workers``: processes for the parts (default: one per core, at most 8; never more than the parts); they
    die with this one.
    ``resume``: skip the parts a previous run finished; refused when the inputs differ (files, options, views).
    ``notes``: also write the text of DocumentReference / DiagnosticReport.presentedForm attachments to
    ``<out>/notes/`` (adapters/fhir_notes.py); without it no notes/ folder. ``<out>/codes.parquet`` always holds
    the codes' descriptions (their most frequent Coding display).
    A resource repeated (same type and id) is read once: see adapters/fhir_duplicates.py for which copy is kept.
    """
    t0 = time.perf_counter()
    if validate and importlib.util.find_spec("fhir") is None:
        raise ValueError("--validate checks resources with fhir.resources: pip install 'omop-behrt[fhir-validate]'")
    files, file_notes, skipped = input_files(source, exclude=out)
    load_fhir_views(views)          # fail fast on a bad view folder before any work
    out = EventDir(Path(out))
    out.path.mkdir(parents=True, exist_ok=True)
    (out.path / ".fhir").mkdir(exist_ok=True)
    with extracting(out.path):       # one extraction writes an event directory at a time
        return _extract(source, out, files, file_notes, skipped, validate, views, progress, resume, workers, notes,
                        t0)


def _extract(source, out: EventDir, files: list[Path], file_notes: list[str], skipped: list, validate: bool,
             views, progress: bool, resume: bool, workers: int | None, notes: bool,
             t0: float) -> FhirExtractSummary:
    """:func:`extract` once it holds the event directory."""
    src = str(Path(source).resolve())
    manifest = out.manifest if resume else {}
    # a resumed run cuts the input as the run it continues did (the minimum number of parts follows the cores)
    min_parts = (manifest.get("fingerprint") or {}).get("min_parts", 8) if manifest else _PARTS
    parts = _parts(files, min_parts)
    now = _fingerprint(src, files, parts, validate, views, notes, min_parts)
    if resume:
        _check_resume(out, manifest, now)
    else:
        for old in (list(out.events_dir.glob("*.parquet*")) + list(out.path.glob("quarantine*.parquet*"))
                    + list((out.path / ".fhir").glob("*.parquet*")) + list(out.path.glob("codes.parquet*"))):
            old.unlink()
        clear_notes(out.path)
    if notes:
        out.notes_dir.mkdir(exist_ok=True)
    done: dict = manifest.setdefault("parts", {})
    manifest.update({"source": src, "adapter": "fhir", "fingerprint": now, "validate": validate,
                     "views": str(views) if views else None, "notes": file_notes, "with_notes": bool(notes),
                     "skipped_files": skipped})
    out.manifest = manifest
    out.write_manifest()
    known = _patient_ids_first(files)
    known_file = out.path / ".fhir" / "known-patients.npy"      # sorted once; each part memory-maps it
    np.save(known_file, np.unique(np.fromiter(known, np.int64, len(known))))
    todo = [(i, p) for i, p in enumerate(parts) if str(i) not in done]
    nworkers = max(1, min(workers or min(_WORKERS, os.cpu_count() or 1), len(todo)))
    args = [(i, p, str(out.path), str(views) if views else None, validate, str(known_file), notes) for i, p in todo]
    if nworkers > 1:
        compile_parts(views)       # once here, inherited by the forked workers
    bar = tqdm(total=len(parts), initial=len(parts) - len(todo), desc="extract FHIR", unit="part",
               disable=not progress, leave=False)

    def part_done(a: tuple, counts: dict) -> None:
        done[str(a[0])] = counts
        out.write_manifest()
        bar.update(1)
    try:
        run_parts(run_part, args, nworkers, part_done)
    finally:
        bar.close()
    summary = FhirExtractSummary(source=src, files=len(files), validated=validate, skipped_files=skipped)
    finish(out, summary, file_notes)
    summary.seconds = round(time.perf_counter() - t0, 3)
    manifest["summary"] = summary.as_dict()
    out.write_manifest()
    return summary


def _patient_ids_first(files: list[Path]) -> set[int]:
    """Subject ids of the Patients of NDJSON files that start with a Patient (read first and cheaply), so every
    part knows them up front. Only the Patient lines' ids are decoded (:func:`patient_ids`): a bulk export written
    as one file (Patients first, then everything else) is scanned for them, not parsed whole in this one process."""
    known: set[int] = set()
    for f in files:
        if not is_ndjson(f):
            continue
        items = read_ndjson(f)
        first = next(items, None)
        items.close()
        if first is None or first.resource is None or first.resource.get("resourceType") != "Patient":
            continue
        known.update(map(fhir_id, patient_ids(f)))
    return known


def read_persons_parts(out: Path) -> pa.Table:
    """The persons of every part (PERSONS_PART_SCHEMA; a part written before ``death_raw`` existed gets nulls)."""
    files = sorted((out / ".fhir").glob("persons-*.parquet"))
    if not files:
        return PersonBuffer().table()
    return pa.concat_tables(conform(pq.read_table(f), PERSONS_PART_SCHEMA, str(f)) for f in files)



def finish(out: EventDir, summary: FhirExtractSummary, notes: list[str]) -> None:
    """Settle repeated resources, assemble persons, settle pending rows (subject not seen in their part), and
    count what is on disk."""
    import duckdb
    part_quarantine = sorted(out.path.glob("quarantine-fhir-[0-9]*.parquet"))
    dups = settle(out.path / ".fhir", out.events_dir, part_quarantine)
    write_table(dups.quarantine, out.path / "quarantine-fhir-duplicates.parquet")
    summary.duplicates_by_type = dups.by_type
    persons = dups.keep(read_persons_parts(out.path))
    if persons.num_rows:
        pairs = persons.group_by(["subject_id", "source_id"]).aggregate([])
        counts = pairs.group_by("subject_id").aggregate([("source_id", "count"), ("source_id", "min"),
                                                         ("source_id", "max")])
        clash = counts.filter(pc.greater(counts.column("source_id_count"), 1))
        if clash.num_rows:
            raise ValueError(f"subject_id collision: FHIR Patient ids {clash.column('source_id_min')[0]!r} and "
                             f"{clash.column('source_id_max')[0]!r} hash to the same subject_id "
                             f"{clash.column('subject_id')[0]}; rename one of them")
        for raw, kept, element in (("birth_raw", "birth_date", "birthDate"),
                                   ("death_raw", "death_date", "deceasedDateTime")):
            bad = pc.and_(pc.is_valid(persons.column(raw)), pc.is_null(persons.column(kept)))
            if pc.sum(bad).as_py():     # the example's shape, not its value: a warning is shown and logged
                shape = pc.filter(persons.column(raw), bad)[0].as_py()
                shape = "".join("9" if ch.isdigit() else "A" if ch.isalpha() else ch for ch in shape)
                summary.warnings.append(f"{pc.sum(bad).as_py():,} Patients have an unusable {element} "
                                        f"(e.g. one shaped {shape}): kept, {kept} null")
    write_table(persons.select(PERSONS_SCHEMA.names).cast(PERSONS_SCHEMA), out.path / "persons.parquet")
    parts = out.manifest.get("parts", {})
    summary.resources_read = sum(p["read"] for p in parts.values())
    resolved = quarantined = 0
    ids = persons.column("subject_id")
    writer = ShardWriter(out.events_dir, "part-pending", EVENTS_SCHEMA)
    q: list[pa.Table] = []
    pending_codes: list[pa.Table] = []
    for f in sorted((out.path / ".fhir").glob("pending-*.parquet")):
        t = dups.keep(pq.read_table(f))
        ok = pc.is_in(t.column("subject_id"), value_set=ids)
        kept = t.filter(ok)
        writer.write(EventBuffer.to_events(kept))
        pending_codes.append(description_counts(kept))
        resolved += kept.group_by(["source", "row"]).aggregate([]).num_rows
        lost = t.filter(pc.invert(ok))
        if lost.num_rows:
            keys = pa.table({"source": lost.column("source"), "row": lost.column("row")})
            first_rows = keys.append_column("i", pa.array(np.arange(lost.num_rows))) \
                .group_by(["source", "row"]).aggregate([("i", "min")]).column("i_min")
            lost = lost.take(first_rows)
            reason = pc.binary_join_element_wise("unresolvable reference: subject Patient/", lost.column("patient"),
                                                 " is not in the input", "")
            qb = QuarantineBuffer()
            qb.add_table(lost.append_column("reason", reason))
            q.append(qb.table())
            quarantined += len(first_rows)
    writer.close()
    if q:
        write_table(pa.concat_tables(q), out.path / "quarantine-fhir-pending.parquet")
    summary.codes_described = write_descriptions(out, pending_codes)
    if out.manifest.get("with_notes"):
        _settle_notes(out, summary, ids)
    summary.resources_out = sum(p["out"] for p in parts.values()) + resolved - dups.out
    summary.quarantined = sum(p["quarantined"] for p in parts.values()) + quarantined + dups.out + dups.pending
    for p in parts.values():
        for k, n in p["ignored"].items():
            summary.ignored_by_type[k] = summary.ignored_by_type.get(k, 0) + n
        for k, n in p["by_type"].items():
            summary.resources_by_type[k] = summary.resources_by_type.get(k, 0) + n
        for k, n in p.get("systems", {}).items():
            summary.unknown_code_systems[k] = summary.unknown_code_systems.get(k, 0) + n
    summary.resources_in = summary.resources_read - sum(summary.ignored_by_type.values())
    summary.persons = persons.num_rows
    files = [str(f) for f in out.event_files()]
    con = duckdb.connect()
    periods = OBSERVATION_PERIODS_SCHEMA.empty_table()
    if files:
        # FHIR has no observation periods: each person's span of events stands in for one
        periods = con.sql(
            "SELECT subject_id, CAST(MIN(time) AS DATE) AS start_date, "
            "CAST(GREATEST(MAX(time), MAX(end_time)) AS DATE) AS end_date FROM read_parquet($f) "
            "WHERE time IS NOT NULL GROUP BY 1 ORDER BY 1", params={"f": files}).to_arrow_table()
    write_table(periods.cast(OBSERVATION_PERIODS_SCHEMA), out.path / "observation_periods.parquet")
    if files:
        # one more pass over the events: counts per (domain, visit_id), small next to the events themselves;
        # the domain counts and the visit statistics both come from it
        con.execute("CREATE TEMP TABLE g AS SELECT domain, visit_id, COUNT(*) AS n FROM read_parquet($f) "
                    "GROUP BY 1, 2", {"f": files})
        rows = con.execute("SELECT domain, CAST(SUM(n) AS BIGINT) FROM g GROUP BY 1").fetchall()
        summary.events_by_domain = {d: n for d, n in rows}
        summary.events_out = sum(summary.events_by_domain.values())
        summary.visits, summary.rebuilt_visits, dangling, visit_events, distinct = con.execute(
            "WITH v AS (SELECT DISTINCT visit_id FROM g WHERE domain = 'visit') "
            "SELECT COUNT(DISTINCT visit_id) FILTER (WHERE visit_id > 0), "
            "COUNT(DISTINCT visit_id) FILTER (WHERE visit_id < 0), "
            "COALESCE(CAST(SUM(n) FILTER (WHERE visit_id > 0 AND visit_id NOT IN (SELECT visit_id FROM v)) "
            "AS BIGINT), 0), "
            "COALESCE(CAST(SUM(n) FILTER (WHERE domain = 'visit') AS BIGINT), 0), "
            "COUNT(visit_id) FILTER (WHERE domain = 'visit') FROM g").fetchone()
        if dangling:
            summary.warnings.append(f"{dangling:,} events point at an Encounter that is not in the input "
                                    f"(visit_id kept)")
        if distinct < visit_events:
            summary.warnings.append(f"{visit_events - distinct:,} Encounters repeat a visit_id (a repeated "
                                    f"Encounter id, or a hash collision)")
    con.close()
    dropped = sum(p.get("values_dropped", 0) for p in parts.values())
    if dropped:
        summary.warnings.append(f"{dropped:,} values a 32-bit float cannot hold (NaN, infinite or beyond +-3.4e38) "
                                f"dropped; their events kept without a value")
    unparseable = sum(p.get("values_unparseable", 0) for p in parts.values())
    if unparseable:
        summary.warnings.append(f"{unparseable:,} values that are not numbers (a string such as \"7,5\" where FHIR "
                                f"asks for a decimal) dropped; their events kept without a value")
    summary.quarantined_by_reason = {}
    # resources' quarantine rows (the notes' are counted apart, in the notes_* fields)
    files = [f for f in sorted(out.path.glob("quarantine*.parquet")) if not f.name.startswith("quarantine-notes")]
    quarantine = pa.concat_tables([QUARANTINE_SCHEMA.empty_table()]
                                  + [pq.read_table(f, schema=QUARANTINE_SCHEMA) for f in files])
    reasons = pc.value_counts(quarantine.column("reason")).to_pylist()
    broken = quarantine.filter(pc.or_(pc.starts_with(quarantine.column("reason"), "gzip stream"),
                                      pc.starts_with(quarantine.column("reason"), "read error")))
    for r in broken.to_pylist():    # a file that could not be read to its end: say so beyond the counts
        summary.warnings.append(f"{r['source']}: {r['reason']}")
    for r in reasons:
        key = _reason_kind(r["values"])
        summary.quarantined_by_reason[key] = summary.quarantined_by_reason.get(key, 0) + r["counts"]
    summary.warnings = notes + summary.warnings


#: the most frequent description of each code (ties: the smallest), over the parts' counts and the pending rows'
_DESCRIPTIONS_SQL = """
SELECT code, description FROM (SELECT code, description, SUM(n) AS n FROM counts GROUP BY code, description)
QUALIFY ROW_NUMBER() OVER (PARTITION BY code ORDER BY n DESC, description) = 1
ORDER BY code
"""


def write_descriptions(out: EventDir, pending: list[pa.Table]) -> int:
    """Write ``codes.parquet`` (code, description) from the parts' (code, description, n) counts and those of the
    pending rows that were written; return its rows. The same counts give the same file, resumed or not."""
    import duckdb
    tables = [pq.read_table(f) for f in sorted((out.path / ".fhir").glob("codes-*.parquet"))] + pending
    counts = pa.concat_tables([DESCRIPTION_COUNTS_SCHEMA.empty_table()]
                              + [t.cast(DESCRIPTION_COUNTS_SCHEMA) for t in tables])
    con = duckdb.connect()
    try:
        con.register("counts", counts)
        table = con.sql(_DESCRIPTIONS_SQL).to_arrow_table()
    finally:
        con.close()
    write_table(table.cast(CODE_DESCRIPTIONS_SCHEMA), out.path / "codes.parquet")
    return table.num_rows


def _settle_notes(out: EventDir, summary: FhirExtractSummary, person_ids: pa.Array) -> None:
    """Settle the notes pending on a Patient and count the notes: in = written + quarantined + skipped."""
    resolved, lost = settle_pending_notes(out.path, person_ids)
    counts = [p.get("notes", {}) for p in out.manifest.get("parts", {}).values()]
    summary.with_notes = True
    summary.notes_in = sum(c.get("in", 0) for c in counts)
    summary.notes_by_source, repeated = notes_on_disk(out.path)
    if repeated:
        summary.warnings.append(f"{repeated:,} notes repeat a DocumentReference / DiagnosticReport id already "
                                f"written (a resource read twice; every copy kept)")
    summary.notes_out = sum(summary.notes_by_source.values())
    summary.notes_quarantined = sum(c.get("quarantined", 0) for c in counts) + lost
    for c in counts:
        for r, n in c.get("skipped", {}).items():
            summary.notes_skipped_by_reason[r] = summary.notes_skipped_by_reason.get(r, 0) + n
    summary.notes_skipped = sum(summary.notes_skipped_by_reason.values())
    files = sorted(out.path.glob("quarantine-notes-*.parquet"))
    if files:
        reasons = pa.concat_tables(pq.read_table(f, columns=["reason"]) for f in files).column("reason")
        for r in pc.value_counts(reasons).to_pylist():
            key = _reason_kind(r["values"])
            summary.notes_quarantined_by_reason[key] = summary.notes_quarantined_by_reason.get(key, 0) + r["counts"]
    expected = sum(c.get("out", 0) for c in counts) + resolved
    if summary.notes_out != expected or summary.notes_in != (summary.notes_out + summary.notes_quarantined
                                                             + summary.notes_skipped):
        summary.warnings.append(f"notes do not add up: {summary.notes_in:,} in, {summary.notes_out:,} written "
                                f"({expected:,} expected), {summary.notes_quarantined:,} quarantined, "
                                f"{summary.notes_skipped:,} skipped")


def _reason_kind(reason: str) -> str:
    """A quarantine reason without its particular value, for counting (``impossible time '2021-02-30'`` -> ...)."""
    if reason.startswith("duplicate "):            # duplicate Condition/c1 (kept ...) -> duplicate Condition
        return reason.split("/", 1)[0]
    reason = _AFTER_LINE.sub("", reason)           # gzip stream truncated after line 812: ... -> ... truncated
    cuts = [i for i in (reason.find(" '"), reason.find(": ")) if i > 0]
    return reason[:min(cuts)] if cuts else reason

"""One part of a FHIR extraction: whole files (or line ranges of a large NDJSON file) -> event shards, a persons
part, quarantine rows, pending rows.

A part runs in a worker process (adapters/fhir.py starts them): it compiles the views (once per process),
streams its files (NDJSON lines of types without a view are counted, not parsed: adapters/fhir_reader.py skims
them), runs each resource's views, resolves references (once per reference and file) and turns rows into Arrow batches
(vectorised, adapters/fhir_events.py). Rows whose Patient the part has not seen are written aside as pending;
the run settles them once every Patient is known.

Every resource with an id is also listed (key, type, id, meta.lastUpdated, file, line) in
``.fhir/resources-<part>.parquet``, and each event shard has a row-aligned ``.fhir/eventkeys-*`` shard of resource
keys, so that repeated (type, id) pairs across parts are settled after the parts (adapters/fhir_duplicates.py).
A resource's key is ``part << 32 | its number in the part``: increasing in reading order. The part also counts the
(code, description) pairs of the events it writes (``.fhir/codes-<part>.parquet``) and, with notes asked for,
reads DocumentReference / DiagnosticReport text attachments (adapters/fhir_notes.py); their types then leave the
view dispatch, so that other resources pay nothing for notes.
"""
from __future__ import annotations

import gc
import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa

from omop_behrt.events import EVENTS_SCHEMA, ShardWriter, write_table
from omop_behrt.adapters.fhir_events import (DESCRIPTION_COUNTS_SCHEMA, EventBuffer, PersonBuffer, QuarantineBuffer,
                                             description_counts)
from omop_behrt.adapters.fhir_pool import exit_if_orphaned
from omop_behrt.adapters.fhir_files import is_ndjson
from omop_behrt.adapters.fhir_reader import expand_bundles, read_bundle, read_ndjson, resolve
from omop_behrt.adapters.fhir_views import _combined, _event_columns, _event_views, load_fhir_views
from omop_behrt.adapters.viewdefinition import View, ViewError

_MASK63 = (1 << 63) - 1
_SKIM_BYTES = 64 << 20            # Bundles larger than this (gzip counted 6x) are skimmed, not parsed whole
KEY_SCHEMA = pa.schema([pa.field("key", pa.int64())])
RESOURCES_SCHEMA = pa.schema([pa.field("key", pa.int64()), pa.field("type", pa.string()),
                              pa.field("id", pa.string()), pa.field("updated", pa.string()),
                              pa.field("source", pa.string()), pa.field("row", pa.string())])
_LISTED = pa.struct([(f.name, pa.int32() if f.name == "source" else f.type) for f in RESOURCES_SCHEMA])


def fhir_id(fhir_resource_id: str) -> int:
    """Stable positive int64 for a FHIR id: the first 8 bytes of its sha256, masked to 63 bits (0 maps to 1)."""
    return int.from_bytes(hashlib.sha256(fhir_resource_id.encode()).digest()[:8], "big") & _MASK63 or 1


@lru_cache(maxsize=1 << 18)
def _subject_id(fhir_resource_id: str) -> int:
    """:func:`fhir_id`, cached: Patient and Encounter ids repeat on every event that refers to them."""
    return fhir_id(fhir_resource_id)


class Part:
    """Reads one part (whole files, or line ranges of a large NDJSON file) into event shards, a persons part,
    quarantine and pending rows."""

    def __init__(self, index: int, files: list, out: str, views_dir: str | None, validate: bool,
                 known: "set[int] | str | None", notes: bool = False, batch_rows: int = 200_000):
        # each piece of the part: a whole file (its path), or [path, start, end, first line] of a large NDJSON file
        self.index, self.out, self.validate = index, Path(out), validate
        self.files = [Path(f if isinstance(f, str) else f[0]) for f in files]
        self.ranges = [{} if isinstance(f, str) else {"start": f[1], "end": f[2], "first_line": f[3]} for f in files]
        self.base = index << 32
        views = load_fhir_views(views_dir)
        self.by_type = _event_views(views)
        self.patient_view = views.get("patient")
        # subject ids known to exist: the NDJSON Patients read up front (sorted once), plus this part's own
        # Patients (merged in, sorted, at each flush; few next to the first)
        # (a path: the sorted ids the run saved once, memory-mapped; every part shares the pages, none unpickles or
        # sorts a million ids again)
        self.known = np.load(known, mmap_mode="r") if isinstance(known, str) else \
            np.unique(np.fromiter(known or (), np.int64, len(known or ())))
        self.known_here = np.empty(0, np.int64)
        self.new_known: list[int] = []
        self.batch_rows = batch_rows
        self.counts = {"read": 0, "ignored": {}, "by_type": {}, "out": 0, "quarantined": 0, "pending": 0}
        work = self.out / ".fhir"
        self.events = ShardWriter(self.out / "events", f"part-{index:05d}", EVENTS_SCHEMA)
        self.event_keys = ShardWriter(work, f"eventkeys-{index:05d}", KEY_SCHEMA)   # row-aligned with events
        self.pending = ShardWriter(work, f"pending-{index:05d}", EventBuffer.pending_schema())
        self.resources: list[tuple] = []
        self.quarantine = QuarantineBuffer()
        self.persons = PersonBuffer()
        self.buffer = EventBuffer()
        self.systems: dict[str, int] = {}
        self.descriptions: list[pa.Table] = []       # (code, description, n) of the events written, per batch
        # notes (only when asked): their types leave the view dispatch, so no other resource pays for them
        self.note_types: frozenset[str] = frozenset()
        self.note_views: dict[str, list[View]] = {}
        self.notes = None
        if notes:
            from omop_behrt.adapters.fhir_notes import NOTE_TYPES, NoteReader
            self.note_types = NOTE_TYPES
            self.note_views = {t: self.by_type.pop(t) for t in NOTE_TYPES if t in self.by_type}
            self.notes = NoteReader(index, self.out, self._known)
        # each type's views as one generated function (adapters/view_codegen.py): their common paths run once
        self.type_rows = {t: _combined(vs) for t, vs in (self.by_type | self.note_views).items()}
        self.fast_types = {t: vs for t, vs in self.by_type.items() if t != "Patient"}
        # references resolved in the file being read: reference -> (subject id, patient id) or why it is refused;
        # Encounter reference -> visit id (cleared per file, and per batch within a large NDJSON file)
        self.subjects: dict[str, tuple[int, str] | str] = {}
        self.visits: dict[str, int | None] = {}
        # the types the NDJSON reader parses (the others are counted from their peeked type, unparsed);
        # --validate checks every resource, so it parses them all. Bundles are parsed whole: with the collector
        # held back (run()), orjson on every entry costs less than the skim's msgspec pass plus orjson on the
        # wanted entries (bench/fhir_phases.py: one part on 300 Synthea bundles 0.69 vs 0.77 CPU-s); a Bundle
        # over _SKIM_BYTES is still skimmed, so that its unwanted entries never become Python objects (memory)
        self.wanted = None if validate else frozenset(self.by_type) | {"Patient", "Bundle"} | self.note_types

    # -- per resource ------------------------------------------------------------------------------
    def run(self) -> dict:
        # parsed JSON holds no reference cycles: collect young objects rarely (~10% faster, memory unchanged)
        thresholds = gc.get_threshold()
        gc.set_threshold(100_000, 50, 100)
        try:
            for fi, path in enumerate(self.files):
                exit_if_orphaned()
                if is_ndjson(path):
                    self._items(fi, expand_bundles(read_ndjson(path, self.wanted, **self.ranges[fi])), {})
                else:
                    big = path.stat().st_size * (6 if path.name.endswith(".gz") else 1) > _SKIM_BYTES
                    urls, items = read_bundle(path, self.wanted if big else None)
                    self._items(fi, items, urls)
            self._flush()
        finally:
            gc.set_threshold(*thresholds)
        self.events.close()
        self.event_keys.close()
        self.pending.close()
        if self.notes is not None:
            self.counts["notes"] = self.notes.close()
        codes = pa.concat_tables([DESCRIPTION_COUNTS_SCHEMA.empty_table()] + self.descriptions)
        codes = codes.group_by(["code", "description"]).aggregate([("n", "sum")])
        write_table(pa.table({"code": codes.column("code"), "description": codes.column("description"),
                              "n": codes.column("n_sum")}, schema=DESCRIPTION_COUNTS_SCHEMA),
                    self.out / ".fhir" / f"codes-{self.index:05d}.parquet")
        # the file as its number in the part, written as a dictionary of the part's files (cheaper than a path each)
        listed = pa.Table.from_struct_array(pa.array(self.resources, _LISTED))
        source = pa.DictionaryArray.from_arrays(listed.column("source").combine_chunks(),
                                                pa.array([str(f) for f in self.files], pa.string()))
        write_table(listed.set_column(4, "source", source),
                    self.out / ".fhir" / f"resources-{self.index:05d}.parquet")
        write_table(self.quarantine.table(), self.out / f"quarantine-fhir-{self.index:05d}.parquet")
        write_table(self.persons.table(), self.out / ".fhir" / f"persons-{self.index:05d}.parquet")
        self.counts["systems"] = self.systems
        self.counts["files"] = [str(f) for f in self.files]
        return self.counts

    def _items(self, fi: int, items, urls: dict) -> None:
        counts, by_type, ignored = self.counts, self.counts["by_type"], self.counts["ignored"]
        self.subjects.clear()
        self.visits.clear()
        source = str(self.files[fi])
        listed = self.resources.append
        event, validate, base = self._event, self.validate, self.base
        # types whose resources take the short path below (Patient, with the patient view, and notes do not)
        views_of = (self.fast_types if not validate else {}).get
        types = _resource_types()
        read = counts["read"]
        file_urls = urls
        try:
            for item in items:
                read += 1
                res = item.resource
                in_force = file_urls if item.urls is None else item.urls   # an entry of a Bundle on an NDJSON line
                if in_force is not urls:                                  # carries its Bundle's fullUrls:
                    urls = in_force                                       # references resolved anew
                    self.subjects.clear()
                    self.visits.clear()
                if res is None:
                    rt = item.skipped
                    if rt is None:
                        self.quarantine.add(source, item.row, item.error)
                        counts["quarantined"] += 1
                    elif rt in types:                          # a type without a view, left unparsed
                        ignored[rt] = ignored.get(rt, 0) + 1
                    else:
                        by_type[rt] = by_type.get(rt, 0) + 1
                        self.quarantine.add(source, item.row, f"unknown resourceType {rt!r}")
                        counts["quarantined"] += 1
                    continue
                rt = res.get("resourceType")
                views = views_of(rt)
                if views is not None:                          # the common case: a type with event views
                    by_type[rt] = by_type.get(rt, 0) + 1
                    rid = res.get("id")
                    if type(rid) is str:
                        meta = res.get("meta")
                        listed((base + read, rt, rid, meta.get("lastUpdated") if type(meta) is dict else None, fi,
                                item.row))
                    reason = event(res, views, source, item.row, urls, base + read)
                    if reason is not None:
                        self.quarantine.add(source, item.row, reason)
                        counts["quarantined"] += 1
                    elif self.buffer.rows >= self.batch_rows:  # bounded memory inside one large NDJSON file
                        counts["read"] = read
                        self._flush()
                    continue
                views, checked, invalid = self.by_type.get(rt), False, None
                if views is None and rt in self.note_types:    # notes=True only; --validate checks it once
                    checked, invalid = validate, (self._check(res) if validate else None)
                    views = self._note(res, source, item.row, urls, invalid)
                if views is None and rt != "Patient":
                    if isinstance(rt, str) and rt in types:
                        reason = invalid if checked else (self._check(res) if validate else None)
                        if reason is None:
                            ignored[rt] = ignored.get(rt, 0) + 1
                        else:                    # --validate reports every invalid resource, mapped or not
                            by_type[rt] = by_type.get(rt, 0) + 1
                            self.quarantine.add(source, item.row, reason)
                            counts["quarantined"] += 1
                    else:
                        by_type[str(rt)] = by_type.get(str(rt), 0) + 1
                        self.quarantine.add(source, item.row, f"unknown resourceType {rt!r}")
                        counts["quarantined"] += 1
                    continue
                by_type[rt] = by_type.get(rt, 0) + 1
                seq = base + read
                rid = res.get("id")
                if type(rid) is str:
                    meta = res.get("meta")
                    listed((seq, rt, rid, meta.get("lastUpdated") if type(meta) is dict else None, fi, item.row))
                reason = invalid if checked else (self._check(res) if validate else None)
                if reason is None:
                    reason = self._patient(res, source, item.row, seq) if rt == "Patient" else \
                        event(res, views, source, item.row, urls, seq)
                if reason is not None:
                    self.quarantine.add(source, item.row, reason)
                    counts["quarantined"] += 1
                elif self.buffer.rows >= self.batch_rows:
                    counts["read"] = read
                    self._flush()
        finally:
            counts["read"] = read

    def _check(self, res: dict) -> str | None:
        """--validate: the resource against fhir.resources' R4B model; the first errors as the reason."""
        from fhir.resources.R4B import get_fhir_model_class
        try:
            get_fhir_model_class(res["resourceType"]).model_validate(res)
        except Exception as e:     # pydantic.ValidationError, or a type the R4B models do not know
            errors = getattr(e, "errors", None)
            if callable(errors):
                parts = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in errors()[:3]]
                return f"invalid FHIR R4B {res['resourceType']}: " + "; ".join(parts)
            return f"invalid FHIR R4B {res['resourceType']}: {str(e).splitlines()[0]}"
        return None

    def _note(self, res: dict, source: str, row: str, urls: dict, invalid: str | None) -> list[View] | None:
        """Read a note resource's text attachments (one --validate rejected, ``invalid``, gives none); return the
        views of its type, if any, so that it makes its events as without notes."""
        if invalid is None:
            self.notes.add(res, source, row, urls)
        return self.note_views.get(res["resourceType"])

    def _known(self, subject_ids: np.ndarray) -> np.ndarray:
        """Which subject ids are Patients seen so far (read up front, or earlier in this part)."""
        if self.new_known:
            self.known_here = np.union1d(self.known_here, np.array(self.new_known, np.int64))
            self.new_known = []
        return _in_sorted(subject_ids, self.known) | _in_sorted(subject_ids, self.known_here)

    def _patient(self, res: dict, source: str, row: str, key: int) -> str | None:
        pid = res.get("id")
        if not isinstance(pid, str) or not pid:
            return "Patient without an id"
        try:
            rows = self.patient_view.rows(res) if self.patient_view else [(pid, None, None, None, None)]
        except ViewError as e:
            return str(e)
        if not rows:
            return "Patient excluded by the patient view's where"
        names = self.patient_view.column_names if self.patient_view else ["id"]
        sid = fhir_id(pid)
        self.persons.add(sid, pid, dict(zip(names, rows[0])), key)
        self.new_known.append(sid)
        self.counts["out"] += 1
        return None

    def _event(self, res: dict, views: list[View], source: str, row: str, urls: dict, key: int) -> str | None:
        """Run the type's views on one resource; all its rows go to the buffer, or a reason is returned.

        References are resolved once per file (``self.subjects``, ``self.visits``: a Patient or Encounter is
        referred to by many resources), then looked up."""
        try:
            all_rows = self.type_rows[res["resourceType"]](res)
        except ViewError:             # run view by view, so that the error is the one it always was
            return self._event_by_view(res, views, source, row, urls, key)
        subjects, visits = self.subjects, self.visits
        found = []
        for view, rows in zip(views, all_rows):
            if not rows:
                continue
            at = _event_columns(view)
            si, ei = at[0], at[1]
            for r in rows:
                ref = r[si]
                subject = subjects.get(ref) if type(ref) is str else None
                if subject is None:
                    subject = _subject(ref, urls)
                    if type(ref) is str:
                        subjects[ref] = subject
                if type(subject) is str:
                    return subject
                visit = None
                if ei is not None and type(eref := r[ei]) is str:
                    visit = visits.get(eref, _M)
                    if visit is _M:
                        visit = visits[eref] = _visit(eref, urls)
                found.append((at, (r, subject[0], subject[1], visit, source, row, key)))
        if not found:
            return "excluded by the where of every view for " + str(res.get("resourceType"))
        groups = self.buffer.groups
        for at, t in found:
            g = groups.get(at)
            if g is None:
                g = groups[at] = []
            g.append(t)
        self.buffer.rows += len(found)
        return None

    def _event_by_view(self, res: dict, views: list[View], source: str, row: str, urls: dict,
                       key: int) -> str | None:
        """:meth:`_event` for a resource the type's function raised on: views one by one, the first error wins."""
        found = []
        for view in views:
            try:
                rows = view.rows(res)
            except ViewError as e:
                return str(e)
            if not rows:
                continue
            at = _event_columns(view)
            for r in rows:
                subject = _subject(r[at[0]], urls)
                if type(subject) is str:
                    return subject
                found.append((r, at, subject[0], subject[1], _visit(r[at[1]], urls) if at[1] is not None else None))
        if not found:
            return "excluded by the where of every view for " + str(res.get("resourceType"))
        buffer = self.buffer
        for r, at, sid, pid, visit in found:
            buffer.group(at).append((r, sid, pid, visit, source, row, key))
        buffer.end_resource(len(found))
        return None

    # -- per batch -----------------------------------------------------------------------------------
    def _flush(self) -> None:
        exit_if_orphaned()
        if self.notes is not None:
            self.notes.flush()
        if self.buffer.rows == 0:
            return
        if len(self.subjects) + len(self.visits) > 1 << 17:
            self.subjects.clear()
            self.visits.clear()
        batch, bad, per_resource = self.buffer.build()
        self.buffer = EventBuffer()
        for s, n in batch.pop("unknown_systems").items():
            self.systems[s] = self.systems.get(s, 0) + n
        for k in ("values_dropped", "values_unparseable"):
            self.counts[k] = self.counts.get(k, 0) + batch.pop(k)
        table = batch["table"]
        # resources with a bad row go to quarantine whole (first bad row's reason); the rest are out or pending
        bad_res = np.unique(per_resource[bad]) if bad.any() else np.empty(0, np.int64)
        if len(bad_res):
            first = np.unique(per_resource[bad], return_index=True)[1]
            qt = table.filter(pa.array(bad)).take(pa.array(first))
            self.quarantine.add_table(qt)
            self.counts["quarantined"] += len(bad_res)
        keep = ~np.isin(per_resource, bad_res)
        known = self._known(table.column("subject_id").to_numpy())
        ok = keep & known
        wait = keep & ~known
        self.counts["out"] += len(np.unique(per_resource[ok]))
        self.counts["pending"] += len(np.unique(per_resource[wait]))
        if ok.any():
            written = table.filter(pa.array(ok))
            self.events.write(EventBuffer.to_events(written))
            self.descriptions.append(description_counts(written))
            self.event_keys.write(pa.table({"key": per_resource[ok]}, schema=KEY_SCHEMA))
        if wait.any():
            schema = EventBuffer.pending_schema()
            table = table.append_column("key", pa.array(per_resource, pa.int64()))
            self.pending.write(table.filter(pa.array(wait)).select(schema.names).cast(schema))


_M = object()                 # a reference not resolved yet (in the per-file cache of _event)


def _subject(ref: object, urls: dict) -> tuple[int, str] | str:
    """(subject id, Patient id) of a subject reference, or the reason the resource is refused."""
    subject = resolve(ref, urls)
    if subject is None:
        return f"unresolvable reference: subject {ref!r}" if ref else "no subject (subject/patient)"
    if subject[0] != "Patient":
        return f"subject {subject[0]}/{subject[1]} is not a Patient"
    return _subject_id(subject[1]), subject[1]


def _visit(ref: object, urls: dict) -> int | None:
    """The visit id of an Encounter reference (None: no reference, or not to an Encounter)."""
    enc = resolve(ref, urls)
    return _subject_id(enc[1]) if enc is not None and enc[0] == "Encounter" else None


def _in_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Which ``values`` are in the sorted array ``sorted_ids`` (binary search; ``sorted_ids`` is not re-sorted)."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_ids, values).clip(max=len(sorted_ids) - 1)
    return sorted_ids[at] == values


@lru_cache(maxsize=1)
def _resource_types() -> frozenset[str]:
    """The FHIR R4/R4B/R5 resource type names (``sql/fhir/resource_types.txt``), so sniffing needs no fhir.resources."""
    text = (resources.files("omop_behrt.sql") / "fhir" / "resource_types.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _is_resource_type(name: str) -> bool:
    """Whether ``name`` is a FHIR resource type (R4, R4B or R5)."""
    return name in _resource_types()


def run_part(args: tuple) -> dict:
    """Run one part (the picklable entry point for worker processes)."""
    return Part(*args).run()

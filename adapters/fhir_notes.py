"""Clinical notes from FHIR: DocumentReference ``content[].attachment`` and DiagnosticReport ``presentedForm[]``
text attachments -> NOTES_SCHEMA rows in ``<eventdir>/notes/``, only when extraction is asked for notes.

Reading a note is per attachment in Python (base64 and charset decoding are per note by nature); times, the
known-Patient check and writing are vectorised per batch, as for events. Accounting is per attachment (a
DocumentReference without any counts as one): in = written + quarantined + skipped.

- skipped (counted by reason in the summary, no row): not ``text/*`` (a PDF, an image), no inline ``data`` (only
  a ``url``: nothing is fetched), no contentType, an empty text, a DocumentReference without an attachment;
- quarantined (a row in ``quarantine-notes-*.parquet``): data not base64, text not in its charset (UTF-8 unless
  the contentType names another), no subject, a subject that is not a Patient, no or a bad time, and, settled
  at the end of the run like events, a Patient that is not in the input.

The subject and the encounter map to subject_id / visit_id exactly as events' do (``fhir_id`` of the resolved id).
Times: DocumentReference ``context.period.start`` (R5 ``period.start``), else ``date``; DiagnosticReport
``effectiveDateTime`` / ``effectivePeriod.start``, else ``issued``; written as events' are (offset dropped).
"""
from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omop_behrt.events import NOTES_SCHEMA, QUARANTINE_SCHEMA, ShardWriter, write_table
from omop_behrt.adapters.fhir_events import parse_times
from omop_behrt.adapters.fhir_part import _subject_id
from omop_behrt.adapters.fhir_reader import resolve

#: the resource types notes are read from
NOTE_TYPES = frozenset({"DocumentReference", "DiagnosticReport"})

#: a part's notes whose Patient it has not seen: settled by :func:`settle_pending_notes` when all are known
PENDING_NOTES_SCHEMA = pa.schema(list(NOTES_SCHEMA) + [pa.field("patient", pa.string()),
                                                       pa.field("file", pa.string()), pa.field("row", pa.string())])

_WHITESPACE = re.compile(r"\s+")
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9._:\-]+)", re.IGNORECASE)
_COLS = ("subject_id", "patient", "time", "note_id", "title", "text", "visit_id", "source", "file", "row", "reason")
_FLUSH_BYTES = 32 << 20        # note text held before a part writes it out (bounded memory on large note files)


def _display(concepts: object) -> str | None:
    """The first ``text``, else the first ``coding.display``, of a CodeableConcept or a list of them."""
    items = concepts if type(concepts) is list else [concepts]
    for cc in items:
        if type(cc) is dict and type(cc.get("text")) is str and cc["text"].strip():
            return cc["text"]
    for cc in items:
        if type(cc) is dict and type(cc.get("coding")) is list:
            for c in cc["coding"]:
                if type(c) is dict and type(c.get("display")) is str and c["display"].strip():
                    return c["display"]
    return None


def _get(obj: object, *keys: str) -> object:
    for k in keys:
        if type(obj) is not dict:
            return None
        obj = obj.get(k)
    return obj


def _references(value: object) -> list:
    """Reference strings of a Reference, a list of them, or R5 CodeableReferences."""
    items = value if type(value) is list else [value]
    out = []
    for it in items:
        ref = _get(it, "reference")
        if ref is None:
            ref = _get(it, "reference", "reference")      # R5 CodeableReference
        if type(ref) is str:
            out.append(ref)
    return out


class NoteReader:
    """The notes of one part: attachments read per resource, checked and written per batch."""

    def __init__(self, index: int, out: Path, known: Callable[[np.ndarray], np.ndarray]):
        self.known = known
        self.rows: dict[str, list] = {k: [] for k in _COLS}
        self.text_bytes = 0
        self.counts: dict = {"in": 0, "out": 0, "quarantined": 0, "pending": 0, "skipped": {}}
        self.writer = ShardWriter(out / "notes", f"part-{index:05d}", NOTES_SCHEMA)
        self.pending = ShardWriter(out / ".fhir", f"notes-pending-{index:05d}", PENDING_NOTES_SCHEMA)
        self.quarantine: list[pa.Table] = []
        self.quarantine_path = out / f"quarantine-notes-{index:05d}.parquet"

    def _skip(self, reason: str) -> None:
        self.counts["skipped"][reason] = self.counts["skipped"].get(reason, 0) + 1

    def add(self, res: dict, file: str, row: str, urls: dict) -> None:
        """Read the text attachments of one DocumentReference or DiagnosticReport (a note row, a quarantine row
        or a skip count for each)."""
        rt = res.get("resourceType")
        if rt == "DocumentReference":
            content = res.get("content")
            content = content if type(content) is list else []
            attachments = [_get(c, "attachment") for c in content]
            field = "content"
            ctx = res.get("context")
            if type(ctx) is list:                                   # R5: context is the references
                encounters, period = _references(ctx), res.get("period")
            else:
                encounters, period = _references(_get(ctx, "encounter")), _get(ctx, "period")
            when = _get(period, "start") or res.get("date")
            title = _display(res.get("type")) or _display(res.get("category"))
            if not attachments:
                self.counts["in"] += 1
                self._skip("DocumentReference without an attachment")
                return
        else:
            forms = res.get("presentedForm")
            if type(forms) is not list or not forms:
                return                                              # a report without text: no note
            attachments, field = forms, "presentedForm"
            encounters = _references(res.get("encounter"))
            when = res.get("effectiveDateTime") or _get(res, "effectivePeriod", "start") or res.get("issued")
            title = _display(res.get("code")) or _display(res.get("category"))
        rid = res.get("id") if type(res.get("id")) is str else None
        ref = _get(res, "subject", "reference")
        subject = resolve(ref, urls)
        if subject is None:
            why = f"unresolvable note subject: {ref}" if ref else "note without a subject"
        elif subject[0] != "Patient":
            why = f"note subject is not a Patient: {subject[0]}/{subject[1]}"
        else:
            why = None
        visit = None
        for e in encounters:
            enc = resolve(e, urls)
            if enc is not None and enc[0] == "Encounter":
                visit = _subject_id(enc[1])
                break
        many = len(attachments) > 1
        for k, att in enumerate(attachments):
            self.counts["in"] += 1
            where = f"{rt} {field}[{k}]"
            text, reason = self._text(att, where)
            if text is None and reason is None:
                continue                                            # skipped (counted)
            reason = reason or why
            c = self.rows
            c["subject_id"].append(_subject_id(subject[1]) if why is None else None)
            c["patient"].append(subject[1] if why is None else None)
            c["time"].append(when if type(when) is str else None)
            c["note_id"].append(None if rid is None else (f"{rid}#{k + 1}" if many else rid))
            c["title"].append(title)
            c["text"].append(None if reason else text)
            c["visit_id"].append(visit)
            c["source"].append(rt)
            c["file"].append(file)
            c["row"].append(row)
            c["reason"].append(reason)
            self.text_bytes += len(text) if text else 0
        if self.text_bytes >= _FLUSH_BYTES:
            self.flush()

    def _text(self, att: object, where: str) -> tuple[str | None, str | None]:
        """(text, None), (None, quarantine reason) or (None, None) when skipped (counted here)."""
        if type(att) is not dict:
            self._skip("no attachment")
            return None, None
        ct = att.get("contentType")
        if type(ct) is not str or not ct.strip():
            self._skip("no contentType")
            return None, None
        mime, _, params = ct.partition(";")
        mime = mime.strip().lower()
        if not mime.startswith("text/"):
            self._skip(f"not text ({mime})")
            return None, None
        data = att.get("data")
        if type(data) is not str or not data.strip():
            self._skip("no inline data (url only, not fetched)" if att.get("url") else "no data")
            return None, None
        try:
            raw = base64.b64decode(_WHITESPACE.sub("", data), validate=True)
        except (binascii.Error, ValueError) as e:
            return None, f"note data not valid base64: {where} ({e})"
        m = _CHARSET.search(params)
        charset = m.group(1).lower() if m else "utf-8"
        try:
            text = raw.decode("utf-8-sig" if charset in ("utf-8", "utf8") else charset)
        except LookupError:
            return None, f"note charset unknown: {charset!r} in {where}"
        except UnicodeDecodeError as e:
            label = "UTF-8" if charset in ("utf-8", "utf8") else charset
            return None, f"note text not {label}: {where} ({e.reason} at byte {e.start})"
        if not text.strip():
            self._skip("empty text")
            return None, None
        return text, None

    def flush(self) -> None:
        """Check the times, then write the notes whose Patient is known, set aside the others, quarantine the bad."""
        c = self.rows
        if not c["source"]:
            return
        self.rows, self.text_bytes = {k: [] for k in _COLS}, 0
        t, t_reason = parse_times(pa.array(c["time"], pa.string()), "note time")
        early = pa.array(c["reason"], pa.string())
        reason = pc.coalesce(early, t_reason)
        table = pa.table({"subject_id": pa.array(c["subject_id"], pa.int64()), "time": t,
                          "note_id": pa.array(c["note_id"], pa.string()), "title": pa.array(c["title"], pa.string()),
                          "text": pa.array(c["text"], pa.string()), "visit_id": pa.array(c["visit_id"], pa.int64()),
                          "source": pa.array(c["source"], pa.string()), "patient": pa.array(c["patient"], pa.string()),
                          "file": pa.array(c["file"], pa.string()), "row": pa.array(c["row"], pa.string()),
                          "reason": reason})
        bad = pc.is_valid(reason)
        q = table.filter(bad)
        if q.num_rows:
            self.quarantine.append(_quarantine_rows(q, q.column("reason")))
            self.counts["quarantined"] += q.num_rows
        good = table.filter(pc.invert(bad))
        if not good.num_rows:
            return
        known = self.known(good.column("subject_id").to_numpy())
        ok = pa.array(known)
        written = good.filter(ok)
        self.writer.write(written.select(NOTES_SCHEMA.names).cast(NOTES_SCHEMA))
        wait = good.filter(pc.invert(ok))
        self.pending.write(wait.select(PENDING_NOTES_SCHEMA.names).cast(PENDING_NOTES_SCHEMA))
        self.counts["out"] += written.num_rows
        self.counts["pending"] += wait.num_rows

    def close(self) -> dict:
        """Write what is left and the quarantine rows; the part's note counts (aggregates only)."""
        self.flush()
        self.writer.close()
        self.pending.close()
        write_table(pa.concat_tables([QUARANTINE_SCHEMA.empty_table()] + self.quarantine), self.quarantine_path)
        return self.counts


def _quarantine_rows(t: pa.Table, reason: pa.Array) -> pa.Table:
    return pa.table({"source": t.column("file"), "row": t.column("row"), "subject_id": t.column("subject_id"),
                     "time": t.column("time"), "code": pa.nulls(t.num_rows, pa.string()), "reason": reason},
                    schema=QUARANTINE_SCHEMA)


def clear_notes(out: Path) -> None:
    """Remove the notes a previous run left in ``out`` (the folder too: it exists only when notes were asked)."""
    folder = out / "notes"
    if folder.is_dir():
        for f in folder.glob("*.parquet*"):
            f.unlink()
        try:
            folder.rmdir()
        except OSError:
            pass                      # something else of the user's is in there: leave it


def settle_pending_notes(out: Path, person_ids: pa.Array) -> tuple[int, int]:
    """Write the notes set aside by the parts whose Patient is in the input, quarantine the others; return
    (written, quarantined). Settling again (a resume) gives the same files."""
    folder = out / "notes"
    folder.mkdir(exist_ok=True)
    for f in folder.glob("part-pending-*.parquet*"):
        f.unlink()
    writer = ShardWriter(folder, "part-pending", NOTES_SCHEMA)
    lost: list[pa.Table] = [QUARANTINE_SCHEMA.empty_table()]
    for f in sorted((out / ".fhir").glob("notes-pending-*.parquet")):
        t = pq.read_table(f)
        ok = pc.is_in(t.column("subject_id"), value_set=person_ids)
        writer.write(t.filter(ok).select(NOTES_SCHEMA.names).cast(NOTES_SCHEMA))
        gone = t.filter(pc.invert(ok))
        if gone.num_rows:
            reason = pc.binary_join_element_wise("unresolvable note subject: Patient/", gone.column("patient"),
                                                 " is not in the input", "")
            lost.append(_quarantine_rows(gone, reason))
    writer.close()
    quarantine = pa.concat_tables(lost)
    write_table(quarantine, out / "quarantine-notes-pending.parquet")
    return writer.rows, quarantine.num_rows


def notes_on_disk(out: Path) -> tuple[dict[str, int], int]:
    """Notes written per source resource type, read from the files (so the summary counts what is there), and how
    many repeat a (type, note_id) written before (a resource read twice: all copies are kept)."""
    files = sorted((out / "notes").glob("*.parquet"))
    if not files:
        return {}, 0
    keys = pa.concat_tables(pq.read_table(f, columns=["source", "note_id"]) for f in files)
    by_source = {r["values"]: r["counts"] for r in pc.value_counts(keys.column("source")).to_pylist()}
    with_id = keys.filter(pc.is_valid(keys.column("note_id")))
    return by_source, with_id.num_rows - with_id.group_by(["source", "note_id"]).aggregate([]).num_rows

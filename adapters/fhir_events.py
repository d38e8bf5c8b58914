"""View rows -> Arrow event batches: code systems to vocabulary prefixes, FHIR dates to timestamps, checks.

View rows are kept as the views return them (one append per row) and transposed into Arrow columns once per
batch; prefixes, codes, dates and the quarantine reasons are computed vectorised over the whole batch.
"""
from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.events import (DOMAINS, EVENTS_SCHEMA, FLOAT32_MAX, PERSONS_SCHEMA, QUARANTINE_SCHEMA,
                               fill_rebuilt_visits)

#: FHIR code system URI -> vocabulary prefix of ``code`` (OMOP vocabulary_id spelling where there is one).
CODE_SYSTEMS = {
    "http://snomed.info/sct": "SNOMED", "urn:oid:2.16.840.1.113883.6.96": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM", "urn:oid:2.16.840.1.113883.6.90": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10", "urn:oid:2.16.840.1.113883.6.3": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM", "urn:oid:2.16.840.1.113883.6.103": "ICD9CM",
    "http://loinc.org": "LOINC", "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm", "urn:oid:2.16.840.1.113883.6.88": "RxNorm",
    "http://hl7.org/fhir/sid/cvx": "CVX", "urn:oid:2.16.840.1.113883.12.292": "CVX",
    "http://hl7.org/fhir/sid/ndc": "NDC", "urn:oid:2.16.840.1.113883.6.69": "NDC",
    "http://www.ama-assn.org/go/cpt": "CPT4", "urn:oid:2.16.840.1.113883.6.12": "CPT4",
    "http://read.info/readv2": "Read", "urn:oid:2.16.840.1.113883.6.29": "Read",
    "http://read.info/ctv3": "CTV3",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode": "ActCode",
}
_UCUM = "http://unitsofmeasure.org"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_DATETIME = (r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+\-]\d{2}:\d{2})?)?)?)?$")


def code_prefix(system: str | None) -> str:
    """The vocabulary prefix for a code system; unknown ones keep a readable prefix from the URI's last part."""
    if system is None:
        return "NOSYSTEM"
    hit = CODE_SYSTEMS.get(system)
    if hit is not None:
        return hit
    tail = [p for p in re.split(r"[/:#]", system) if p][-1:] or ["UNKNOWN"]
    return _UNSAFE.sub("_", tail[0])     # never empty: the part is non-empty and each unsafe character becomes "_"


def parse_times(values: pa.Array, what: str = "time") -> tuple[pa.Array, pa.Array]:
    """FHIR date/dateTime/instant strings -> timestamp[us] as written (offset dropped) and a reason per bad value.

    Partial dates take the first day (``2014`` -> 2014-01-01). A value that does not match the FHIR grammar,
    names a day that does not exist (2021-02-30) or lies outside 1800..2149 gets a reason; null gets one too.
    """
    s = values.cast(pa.string())
    n = pc.utf8_length(s)
    padded = pc.if_else(pc.equal(n, 4), pc.binary_join_element_wise(s, "-01-01", ""),
                        pc.if_else(pc.equal(n, 7), pc.binary_join_element_wise(s, "-01", ""), s))
    day = pc.utf8_slice_codeunits(padded, 0, 10)
    clock = pc.if_else(pc.greater_equal(n, 19), pc.utf8_slice_codeunits(s, 11, 19), "00:00:00")
    ts = pc.strptime(pc.binary_join_element_wise(day, clock, "T"), "%Y-%m-%dT%H:%M:%S", "us", error_is_null=True)
    well_formed = pc.fill_null(pc.match_substring_regex(s, _DATETIME), False)
    real_day = _real_days(ts, day)
    in_range = pc.fill_null(pc.and_(pc.greater_equal(ts, pa.scalar(dt.datetime(1800, 1, 1), pa.timestamp("us"))),
                                    pc.less(ts, pa.scalar(dt.datetime(2150, 1, 1), pa.timestamp("us")))), False)
    good = pc.and_(pc.and_(well_formed, real_day), in_range)
    if pc.all(good).as_py():
        return ts, pa.nulls(len(s), pa.string())
    bad = pc.invert(good)             # reasons are built for the bad values only
    sb, shown = s.filter(bad), pc.binary_join_element_wise("'", s.filter(bad), "'", "")
    reason = pc.case_when(
        pc.make_struct(pc.is_null(sb), pc.invert(well_formed.filter(bad)), pc.invert(real_day.filter(bad))),
        pa.scalar(f"no {what}"),
        pc.binary_join_element_wise(f"unparseable {what} ", shown, ""),
        pc.binary_join_element_wise(f"impossible {what} ", shown, ""),
        pc.binary_join_element_wise(f"{what} outside 1800-01-01..2149-12-31: ", shown, ""))
    reasons = pc.replace_with_mask(pa.nulls(len(s), pa.string()), bad, reason)
    return pc.if_else(good, ts, pa.scalar(None, pa.timestamp("us"))), reasons


def _real_days(ts: pa.Array, day: pa.Array) -> pa.Array:
    """Whether each parsed date is the day written (strptime rolls 2021-02-30 over to March); only days > 28
    can differ, so only those are formatted back and compared (strftime is the slow part)."""
    real = pc.is_valid(ts).to_numpy(zero_copy_only=False)
    suspect = pc.fill_null(pc.greater(pc.utf8_slice_codeunits(day, 8, 10), "28"), False)
    idx = pc.indices_nonzero(suspect)
    if len(idx):
        same = pc.equal(pc.strftime(ts.take(idx), "%Y-%m-%d"), day.take(idx))
        real[idx.to_numpy()] &= pc.fill_null(same, False).to_numpy(zero_copy_only=False)
    return pa.array(real)


def _prefixed(system: pa.Array, code: pa.Array) -> tuple[pa.Array, dict[str, int]]:
    """``PREFIX/code`` for each row (null where the code is), and the unknown systems with their row counts."""
    enc = system.dictionary_encode()
    uniques = enc.dictionary.to_pylist()
    prefixes = pa.array([code_prefix(u) for u in uniques] + ["NOSYSTEM"], pa.string())
    idx = pc.fill_null(enc.indices, len(uniques))
    out = pc.binary_join_element_wise(prefixes.take(idx), code, "/")
    unknown = {}
    if uniques:
        counts = np.bincount(idx.to_numpy(zero_copy_only=False), minlength=len(uniques) + 1)
        unknown = {u: int(counts[i]) for i, u in enumerate(uniques) if u not in CODE_SYSTEMS}
    if counts_null := (system.null_count and pc.sum(pc.and_(pc.is_null(system), pc.is_valid(code))).as_py()):
        unknown["(no system)"] = int(counts_null)
    return out, unknown


def _floats(values: list) -> tuple[pa.Array, int]:
    """The values as float64, and how many were present but no number (dropped, counted by the caller)."""
    try:
        return pa.array(values, pa.float64()), 0
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        out = [_float(v) for v in values]
        return pa.array(out, pa.float64()), sum(1 for v, f in zip(values, out) if f is None and v is not None)


def _float(v: object) -> float | None:
    """A number, or a string holding one (invalid FHIR, but seen); anything else is None."""
    if isinstance(v, bool):
        return None
    try:
        return float(v) if isinstance(v, (int, float, str)) else None
    except ValueError:
        return None


class EventBuffer:
    """Rows of event views for one batch, kept as the views gave them (one append per row) and grouped by the
    view's column layout; :meth:`build` transposes each group and makes the Arrow table with a reason column."""

    _COLS = ("subject_id", "patient", "visit", "time", "end_time", "system", "code", "value", "domain",
             "source_system", "source_code", "source", "row", "unit", "display", "coding_display",
             "source_display")

    def __init__(self):
        self.groups: dict[tuple, list[tuple]] = {}    # view layout -> [(view row, subject_id, patient, ...)]
        self.rows = 0

    def group(self, at: tuple) -> list[tuple]:
        """The list to append ``(row, subject_id, patient, visit, source, row label, resource key)`` to."""
        return self.groups.setdefault(at, [])

    def end_resource(self, rows: int) -> None:
        self.rows += rows

    def _columns(self) -> tuple[dict[str, list], list[int]]:
        """Python lists per column (``_COLS``) and the resource key of each row, group after group."""
        c: dict[str, list] = {k: [] for k in self._COLS}
        res: list[int] = []
        for at, entries in self.groups.items():
            rows, sid, pid, visit, source, label, key = zip(*entries)
            view_cols = list(zip(*rows))
            none = [None] * len(rows)

            def col(k: int) -> list:
                return view_cols[at[k]] if at[k] is not None else none
            for name, values in zip(("subject_id", "patient", "visit", "source", "row"),
                                    (sid, pid, visit, source, label)):
                c[name].extend(values)
            c["time"].extend(col(2))
            c["end_time"].extend(col(3))
            c["domain"].extend(col(8))
            c["display"].extend(col(13))
            qs = view_cols[at[14]] if at[14] is not None else None
            if qs is None or at[7] is not None:
                c["value"].extend(col(7))
            else:
                c["value"].extend([q.get("value") if type(q) is dict else None for q in qs])
            if qs is None or at[12] is not None:
                c["unit"].extend(col(12))
            else:                        # the UCUM code, else the unit as written, else the code
                c["unit"].extend([(q.get("code") if q.get("system") == _UCUM and q.get("code") else
                                   q.get("unit") or q.get("code")) if type(q) is dict else None for q in qs])
            for coding, system, code, sname, cname, dname in (
                    (4, 5, 6, "system", "code", "coding_display"),
                    (9, 10, 11, "source_system", "source_code", "source_display")):
                if at[coding] is not None:
                    cds = view_cols[at[coding]]
                    c[sname].extend([d.get("system") if type(d) is dict else None for d in cds])
                    c[cname].extend([d.get("code") if type(d) is dict else None for d in cds])
                    c[dname].extend([d.get("display") if type(d) is dict else None for d in cds])
                else:
                    c[sname].extend(col(system))
                    c[cname].extend(col(code))
                    c[dname].extend(none)
            res.extend(key)
        return c, res

    @staticmethod
    def pending_schema() -> pa.Schema:
        return pa.schema(list(EVENTS_SCHEMA) + [pa.field("patient", pa.string()), pa.field("source", pa.string()),
                                                pa.field("row", pa.string()), pa.field("key", pa.int64()),
                                                pa.field("description", pa.string()),
                                                pa.field("source_description", pa.string())])

    def build(self) -> tuple[dict, np.ndarray, np.ndarray]:
        """({"table": events + patient/source/row/reason + descriptions, "unknown_systems": {...}, "values_dropped":
        n}, bad-row mask, resource key). ``description``: the Coding's display, else the view's ``display``;
        ``source_description``: the source Coding's display (both whitespace-collapsed, null when empty)."""
        c, res = self._columns()

        def text(k: str) -> pa.Array:
            try:
                return pa.array(c[k], pa.string())
            except (pa.ArrowInvalid, pa.ArrowTypeError):     # a number or object where a string was expected
                return pa.array([v if type(v) is str else (None if v is None else str(v)) for v in c[k]],
                                pa.string())
        code_raw, system = text("code"), text("system")
        code_raw = pc.if_else(pc.equal(pc.utf8_trim_whitespace(code_raw), ""), pa.scalar(None, pa.string()), code_raw)
        code, unknown = _prefixed(system, code_raw)
        src_raw = text("source_code")
        src, _ = _prefixed(text("source_system"), src_raw)
        source_code = pc.if_else(pc.is_valid(src_raw), src, code)
        t, t_reason = parse_times(text("time"))
        end, _ = parse_times(text("end_time"), "end_time")
        domain = text("domain")
        wide, unparseable = _floats(c["value"])
        # a value a 32-bit float cannot hold (NaN, an infinity, beyond +-3.4e38) is no value, counted
        fits = pc.less_equal(pc.abs(wide), pa.scalar(FLOAT32_MAX))
        dropped = int(pc.sum(pc.and_(pc.is_valid(wide), pc.invert(pc.fill_null(fits, False)))).as_py() or 0)
        values = pc.if_else(fits, wide, pa.scalar(None, pa.float64())).cast(pa.float32())
        unit = pc.if_else(pc.is_valid(values), _clean(text("unit")), pa.scalar(None, pa.string()))
        description = pc.coalesce(_clean(text("coding_display")), _clean(text("display")))
        ok_domain = pc.is_in(domain, value_set=pa.array(DOMAINS))
        reason = pc.case_when(
            pc.make_struct(pc.is_null(code_raw), pc.invert(pc.fill_null(ok_domain, False)), pc.is_valid(t_reason)),
            pa.scalar("no code (no coding with a code)"),
            pc.binary_join_element_wise(pa.scalar(f"domain not one of {'/'.join(DOMAINS)}: "),
                                        pc.fill_null(domain, "null"), ""),
            t_reason)
        table = pa.table({
            "subject_id": pa.array(c["subject_id"], pa.int64()), "time": t, "code": code,
            "numeric_value": values, "visit_id": pa.array(c["visit"], pa.int64()),
            "domain": domain, "concept_id": pa.nulls(self.rows, pa.int64()), "end_time": end,
            "source_code": source_code, "source_concept_id": pa.nulls(self.rows, pa.int64()), "unit": unit,
            "patient": pa.array(c["patient"], pa.string()), "source": pa.array(c["source"], pa.string()),
            "row": pa.array(c["row"], pa.string()), "reason": reason, "description": description,
            "source_description": pc.if_else(pc.is_valid(src_raw), _clean(text("source_display")),
                                             pa.scalar(None, pa.string()))})
        bad = pc.is_valid(reason).to_numpy(zero_copy_only=False)
        return ({"table": table, "unknown_systems": unknown, "values_dropped": dropped,
                 "values_unparseable": unparseable}, bad, np.asarray(res, np.int64))

    @staticmethod
    def to_events(table: pa.Table) -> pa.Table:
        """The event columns, with visits rebuilt from (subject, day) where there is no Encounter."""
        t = table.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
        return fill_rebuilt_visits(t)


def _clean(values: pa.Array) -> pa.Array:
    """Whitespace runs collapsed to one space and trimmed; empty strings become null (vectorised, on the distinct
    values only: descriptions and units repeat)."""
    if values.null_count == len(values):
        return values
    enc = values.dictionary_encode()
    s = pc.utf8_trim_whitespace(pc.replace_substring_regex(enc.dictionary, r"\s+", " "))
    s = pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)
    return s.take(enc.indices)


#: per-(code, description) counts of the events written, summed over parts at the end (fhir.py)
DESCRIPTION_COUNTS_SCHEMA = pa.schema([pa.field("code", pa.string()), pa.field("description", pa.string()),
                                       pa.field("n", pa.int64())])


def description_counts(table: pa.Table) -> pa.Table:
    """(code, description, n) over the rows of ``table`` (built by :meth:`EventBuffer.build`): the code with its
    description, and the source code with the source Coding's display where the view had one."""
    def pair(code: str, description: str) -> pa.Table:
        return pa.table({"code": table.column(code).cast(pa.string()),
                         "description": table.column(description).cast(pa.string())})
    pairs = pa.concat_tables([pair("code", "description"), pair("source_code", "source_description")])
    pairs = pairs.filter(pc.and_(pc.is_valid(pairs.column("description")), pc.is_valid(pairs.column("code"))))
    counted = pairs.group_by(["code", "description"]).aggregate([("code", "count")])
    return pa.table({"code": counted.column("code"), "description": counted.column("description"),
                     "n": counted.column("code_count")}).cast(DESCRIPTION_COUNTS_SCHEMA)


class QuarantineBuffer:
    """Quarantine rows (file, line / entry, reason) gathered per resource and per batch."""

    def __init__(self):
        self.rows: list[tuple] = []
        self.tables: list[pa.Table] = []

    def add(self, source: str, row: str, reason: str) -> None:
        self.rows.append((source, row, None, None, None, reason))

    def add_table(self, t: pa.Table) -> None:
        self.tables.append(pa.table({"source": t.column("source"), "row": t.column("row"),
                                     "subject_id": t.column("subject_id"), "time": t.column("time"),
                                     "code": t.column("code"), "reason": t.column("reason")},
                                    schema=QUARANTINE_SCHEMA))

    def table(self) -> pa.Table:
        cols = list(zip(*self.rows)) if self.rows else [[]] * 6
        first = pa.table({f.name: pa.array(list(v), f.type) for f, v in zip(QUARANTINE_SCHEMA, cols)},
                         schema=QUARANTINE_SCHEMA)
        return pa.concat_tables([first] + self.tables)


PERSONS_PART_SCHEMA = pa.schema(list(PERSONS_SCHEMA) + [pa.field("birth_raw", pa.string()),
                                                         pa.field("key", pa.int64()),
                                                         pa.field("death_raw", pa.string())])


class PersonBuffer:
    """Patient view rows -> persons (birth date, sex F/M/U, death date when deceased[x] is a dateTime)."""

    _SEX = {"female": "F", "male": "M"}

    def __init__(self):
        self.cols: dict[str, list] = {k: [] for k in ("subject_id", "source_id", "birth", "sex", "death", "key")}

    def add(self, subject_id: int, source_id: str, rec: dict, key: int) -> None:
        """One Patient; ``key`` is the resource's key (duplicates are settled on it)."""
        c = self.cols
        c["key"].append(key)
        c["subject_id"].append(subject_id)
        c["source_id"].append(source_id)
        b = rec.get("birth_date")
        c["birth"].append(b if type(b) is str else None)
        c["sex"].append(self._SEX.get(rec.get("gender"), "U"))
        d = rec.get("deceased_time")
        c["death"].append(d if type(d) is str else None)

    def table(self) -> pa.Table:
        c = self.cols
        birth_raw = pa.array(c["birth"], pa.string())
        n = pc.utf8_length(birth_raw)
        # year only -> 1 July, year-month -> the 1st (the OMOP adapter's convention for missing parts)
        padded = pc.if_else(pc.equal(n, 4), pc.binary_join_element_wise(birth_raw, "-07-01", ""),
                            pc.if_else(pc.equal(n, 7), pc.binary_join_element_wise(birth_raw, "-01", ""), birth_raw))
        birth, _ = parse_times(padded, "birthDate")
        death_raw = pa.array(c["death"], pa.string())
        death, _ = parse_times(death_raw, "deceasedDateTime")
        return pa.table({"subject_id": pa.array(c["subject_id"], pa.int64()), "birth_date": birth.cast(pa.date32()),
                         "sex": pa.array(c["sex"], pa.string()), "death_date": death.cast(pa.date32()),
                         "source_id": pa.array(c["source_id"], pa.string()), "birth_raw": birth_raw,
                         "key": pa.array(c["key"], pa.int64()), "death_raw": death_raw},
                        schema=PERSONS_PART_SCHEMA)

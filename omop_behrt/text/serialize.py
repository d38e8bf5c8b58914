"""A patient's record as text as of an index date (Hegselmann et al.): what the text encoder embeds.

Each index row (cohort_definition_id, subject_id, index_date) becomes one text: a header (age at index, sex),
then the history before the index date, most recent first, grouped by domain (or by visit), with every code
replaced by its description and repeats collapsed into a count and the most recent date::

    Age at index: 58 years. Sex: female.
    Conditions:
    - Gastrointestinal hemorrhage: 3 months before
    - Osteoarthritis of knee: 4 times, last 2 years before
    Drugs:
    ...

The lines are built in DuckDB (no Python per event), in a fixed order with every tie broken, so the same input
gives the same bytes. Descriptions: the CDM's concept_name when a CDM is given, CALIBER phenotype names for
CALIBER tokens, a caller's table (e.g. FHIR coding.display), else the code itself; the share of events and codes
described is recorded. The texts are patient data: they stay in memory unless :func:`dump_text` is asked.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.tasks.cohorts import check_index
from omop_behrt.db.database import load_sql, render, statements

#: Bumped whenever the same input would give other text (wording, order, truncation rule).
SERIALIZER_VERSION = "2"
GROUPS = ("domain", "visit")
#: How clinical notes join the record: not at all, as lines of a last "Notes:" section of the text, or as
#: texts of their own that the encoder embeds one by one and pools (:attr:`SerializedTexts.notes`).
NOTE_MODES = (None, "append", "pooled")
#: ``notes=True``: appended, the better of the two on the one task measured (bench/notes.py; bench/RESULTS.md)
DEFAULT_NOTES = "append"

TEXTS_SCHEMA = pa.schema([pa.field("cohort_definition_id", pa.int64()), pa.field("subject_id", pa.int64()),
                          pa.field("index_date", pa.timestamp("us")), pa.field("text", pa.string()),
                          pa.field("n_lines", pa.int32()), pa.field("truncated", pa.bool_())])
DESCRIPTIONS_SCHEMA = pa.schema([pa.field("code", pa.string()), pa.field("description", pa.string()),
                                 pa.field("origin", pa.string())])
NOTE_ROWS_SCHEMA = pa.schema([pa.field("row", pa.int64()), pa.field("days", pa.int64()), pa.field("text", pa.string())])
_CALIBER_PREFIXES = ("CALIBER/", "CALIBER_CHAPTER/")


@dataclass
class SerializedTexts:
    """One text per index row (in the index's order), the description coverage and the serialiser's version."""

    texts: pa.Table
    coverage: dict
    version: str = SERIALIZER_VERSION
    provenance: dict = field(default_factory=dict)
    #: with ``notes="pooled"``: one row per (index row, note it may see): row (position in ``texts``), days
    #: before the index date, "title: text" (NOTE_ROWS_SCHEMA); else None
    notes: pa.Table | None = None


def _sql(name: str) -> list[str]:
    return statements(render(load_sql(f"serialize/{name}"), {}))


def _given_descriptions(descriptions) -> pa.Table:
    """A caller's descriptions (a mapping code -> text, or a table with code and description) as a table."""
    if descriptions is None:
        return DESCRIPTIONS_SCHEMA.empty_table()
    if isinstance(descriptions, Mapping):
        codes, texts = list(descriptions), list(descriptions.values())
    else:
        t = descriptions if isinstance(descriptions, pa.Table) else pa.Table.from_pandas(descriptions,
                                                                                          preserve_index=False)
        for need in ("code", "description"):
            if need not in t.column_names:
                raise ValueError(f"descriptions: column {need!r} is missing; expected code and description "
                                 f"(columns present: {t.column_names})")
        codes, texts = t["code"].to_pylist(), t["description"].to_pylist()
    return pa.table({"code": pa.array(codes, pa.string()), "description": pa.array(texts, pa.string()),
                     "origin": pa.array(["given"] * len(codes), pa.string())}, schema=DESCRIPTIONS_SCHEMA)


def _concept_descriptions(cdm, codes: list[str], cdm_schema: str | None, vocab_schema: str | None) -> pa.Table:
    """concept_name for codes shaped VOCABULARY_ID/concept_code, from the CDM's concept table (report's SQL)."""
    from omop_behrt.db.cdm import OmopCdm
    from omop_behrt.vocab.names import concept_names
    if cdm is None or not codes:
        return DESCRIPTIONS_SCHEMA.empty_table()
    cdm = cdm if hasattr(cdm, "qtable") else OmopCdm(cdm, cdm_schema=cdm_schema, vocab_schema=vocab_schema)
    names = concept_names(cdm, codes)
    return pa.table({"code": pa.array(list(names), pa.string()), "description": pa.array(list(names.values())),
                     "origin": pa.array(["concept"] * len(names), pa.string())}, schema=DESCRIPTIONS_SCHEMA)


def _caliber_descriptions(codes: list[str]) -> pa.Table:
    """CALIBER tokens carry their phenotype (or chapter) name after the prefix."""
    pairs = [(c, c.split("/", 1)[1]) for c in codes if c.startswith(_CALIBER_PREFIXES)]
    return pa.table({"code": pa.array([p[0] for p in pairs], pa.string()),
                     "description": pa.array([p[1] for p in pairs], pa.string()),
                     "origin": pa.array(["caliber"] * len(pairs), pa.string())}, schema=DESCRIPTIONS_SCHEMA)


def _source_descriptions(events, codes: list[str]) -> pa.Table:
    """The event directory's own codes.parquet (FHIR coding.display, the CDM's concept_name at extraction)."""
    if events is None or not hasattr(events, "descriptions"):
        return DESCRIPTIONS_SCHEMA.empty_table()
    t = events.descriptions()
    t = t.filter(pc.is_in(t["code"], value_set=pa.array(codes, pa.string())))
    return pa.table({"code": t["code"], "description": t["description"],
                     "origin": pa.array(["source"] * t.num_rows, pa.string())}, schema=DESCRIPTIONS_SCHEMA)


def describe(codes: list[str], *, cdm=None, descriptions=None, cdm_schema: str | None = None,
             vocab_schema: str | None = None, events=None) -> pa.Table:
    """(code, description, origin) for the codes that have one: the caller's first, then the event directory's
    own (``events``: FHIR coding.display, concept_name at extraction), then CALIBER, then the CDM's concept_name."""
    parts = [_given_descriptions(descriptions), _source_descriptions(events, codes), _caliber_descriptions(codes)]
    named = set(pa.concat_tables(parts).filter(pc.is_valid(pc.field("description")))["code"].to_pylist())
    rest = [c for c in codes if c not in named]           # the CDM is asked only for codes still without a name
    parts.append(_concept_descriptions(cdm, rest, cdm_schema, vocab_schema))
    out = pa.concat_tables(parts)
    out = out.filter(pc.and_(pc.is_valid(out["description"]),
                             pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(out["description"])), 0)))
    # one description per code, the first source in the order above; single spaces, no line breaks
    seen: set[str] = set()
    keep = [not (c in seen or seen.add(c)) for c in out["code"].to_pylist()]
    out = out.filter(pa.array(keep, pa.bool_()))
    clean = pc.utf8_trim_whitespace(pc.replace_substring_regex(out["description"], r"\s+", " "))
    return out.set_column(1, "description", clean)


def _assemble(header: str, lines: list[tuple[int, str, int, int, str]], keep: int) -> str:
    """The text texts.sql builds from the header and the newest ``keep`` lines (section, heading, rank, order, line)."""
    kept = sorted((ln for ln in lines if ln[2] <= keep), key=lambda ln: (ln[0], ln[3]))
    parts, section = [header], None
    for sec, heading, _rank, _order, line in kept:
        if sec != section:
            parts.append("\n" + heading)
            section = sec
        parts.append("\n- " + line)
    return "".join(parts)


def _fit_tokens(con, texts: pa.Table, max_tokens: int, count_tokens: Callable[[str], int]) -> pa.Table:
    """Drop the oldest lines of each text over ``max_tokens`` tokens until it fits (binary search on lines kept)."""
    text = texts["text"].to_pylist()
    n_lines = texts["n_lines"].to_pylist()
    truncated = texts["truncated"].to_pylist()
    over = [i for i, t in enumerate(text) if n_lines[i] and count_tokens(t) > max_tokens]
    if over:
        rows = pa.array([texts["row_id"][i].as_py() for i in over], pa.int64())
        con.register("over_rows", pa.table({"row_id": rows}))
        got = con.sql("SELECT l.row_id, l.section, l.heading, l.rank, l.line_order, l.line, h.header FROM lines l "
                      "JOIN over_rows o USING (row_id) JOIN headers h USING (row_id) ORDER BY l.row_id, l.rank"
                      ).to_arrow_table().to_pydict()
        by_row: dict[int, list] = {}
        headers: dict[int, str] = {}
        for r, s, h, k, o, ln, hd in zip(got["row_id"], got["section"], got["heading"], got["rank"],
                                         got["line_order"], got["line"], got["header"]):
            by_row.setdefault(r, []).append((s, h, k, o, ln))
            headers[r] = hd
        pos = {r: i for i, r in enumerate(texts["row_id"].to_pylist())}
        for r, lines in by_row.items():
            lo, hi = 0, n_lines[pos[r]] - 1     # the full text is over: keep at most all lines but one
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if count_tokens(_assemble(headers[r], lines, mid)) <= max_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            i = pos[r]
            text[i], n_lines[i], truncated[i] = _assemble(headers[r], lines, lo), lo, True
    return texts.set_column(texts.schema.get_field_index("text"), "text", pa.array(text, pa.string())) \
        .set_column(texts.schema.get_field_index("n_lines"), "n_lines", pa.array(n_lines, pa.int32())) \
        .set_column(texts.schema.get_field_index("truncated"), "truncated", pa.array(truncated, pa.bool_()))


def serialize(source, index: pa.Table, *, inclusive: bool = False, group: str = "domain", cdm=None,
              descriptions=None, max_chars: int | None = None, max_tokens: int | None = None,
              count_tokens: Callable[[str], int] | None = None, cdm_schema: str | None = None,
              vocab_schema: str | None = None, work_dir: str | Path | None = None,
              threads: int | None = None, notes: str | None = None) -> SerializedTexts:
    """One text per row of ``index`` from the events strictly before its index date (through it if ``inclusive``).

    ``source``: an event directory, or an OMOP CDM (DuckDB file, URL, export folder), extracted with the
    censoring in its SQL exactly as ``embed`` does (into ``work_dir`` or a temporary folder).
    ``cdm``: where concept names come from for an event directory (a CDM source is used by default).
    ``descriptions``: the caller's own code -> text (mapping or table with code, description), tried first.
    ``group``: ``domain`` (sections Conditions, Drugs, ... in that order) or ``visit`` (one section per visit).
    Truncation drops the oldest lines first, never the header: ``max_chars`` characters, or ``max_tokens`` as
    counted by ``count_tokens(text) -> int`` (a tokenizer's count).
    ``notes``: the clinical notes before the index date (an event directory extracted with notes, or a CDM's
    note table), ``append``-ed as a last "Notes:" section (truncated with the rest, oldest first), or
    ``pooled``: returned apart in :attr:`SerializedTexts.notes` for the encoder to embed one by one
    (``True``: :data:`DEFAULT_NOTES`).
    """
    import duckdb

    from omop_behrt.vectors.embed import censored_events, cut_times
    t0 = time.perf_counter()
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    notes = None if notes in (None, False, "none") else DEFAULT_NOTES if notes is True else notes
    if notes not in NOTE_MODES:
        raise ValueError(f"notes must be one of none, append, pooled; got {notes!r}")
    if max_tokens is not None and count_tokens is None:
        raise ValueError("max_tokens needs count_tokens (a callable str -> number of tokens, e.g. a tokenizer's)")
    if max_chars is not None and max_tokens is not None:
        raise ValueError("give max_chars or max_tokens, not both")
    for name, value in (("max_chars", max_chars), ("max_tokens", max_tokens)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    index = check_index(index)
    tmp = None
    if work_dir is None:
        tmp = work_dir = Path(tempfile.mkdtemp(prefix="omop-behrt-serialize-"))
    try:
        events, source_cdm = censored_events(source, index, Path(work_dir), inclusive=inclusive,
                                             cdm_schema=cdm_schema, vocab_schema=vocab_schema,
                                             notes=notes is not None)
        if notes is not None and not events.has_notes():
            raise ValueError(f"notes={notes!r}: the event directory {events.path} was extracted without notes; "
                             f"extract it again with notes (`omop-behrt extract --notes`), or pass the CDM itself")
        cdm = cdm if cdm is not None else source_cdm
        con = duckdb.connect()
        try:
            if threads:
                con.execute(f"SET threads = {int(threads)}")
            idx = pa.table({"row_id": pa.array(range(index.num_rows), pa.int64()),
                            "subject_id": index["subject_id"], "index_date": index["index_date"],
                            "cut": pa.array(cut_times(index, inclusive), pa.timestamp("us"))})
            con.register("idx", idx)
            con.register("persons", events.persons())
            con.register("events", events.events())
            con.register("descriptions", DESCRIPTIONS_SCHEMA.empty_table())
            for stmt in _sql("macros.sql"):
                con.execute(stmt)
            codes = [r[0] for r in con.execute("SELECT DISTINCT code FROM seen ORDER BY 1").fetchall()]
            desc = describe(codes, cdm=cdm, descriptions=descriptions, cdm_schema=cdm_schema,
                            vocab_schema=vocab_schema, events=events)
            con.unregister("descriptions")
            con.register("descriptions", desc)
            con.execute("CREATE TEMP TABLE headers AS " + _sql("headers.sql")[0])
            con.execute("CREATE TEMP TABLE lines AS " + _sql(f"lines_{group}.sql")[0])
            note_rows, note_stats = None, {}
            if notes is not None:
                note_rows, note_stats = _notes(con, events, notes)
            texts = con.sql(_sql("texts.sql")[0], params={"budget": max_chars}).to_arrow_table()
            if max_tokens is not None:
                texts = _fit_tokens(con, texts, max_tokens, count_tokens)
            cov = con.execute(_sql("coverage.sql")[0]).fetchone()
            unknown = con.execute("SELECT count(*) FROM idx i ANTI JOIN persons p USING (subject_id)").fetchone()[0]
            origins = dict(con.execute("SELECT d.origin, count(*) FROM seen s JOIN descriptions d USING (code) "
                                       "GROUP BY 1 ORDER BY 1").fetchall())
        finally:
            con.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    n_events, n_described, n_codes, n_codes_described = (int(v) for v in cov)
    coverage = {"events": n_events, "events_described": n_described,
                "event_share": round(n_described / n_events, 6) if n_events else None,
                "codes": n_codes, "codes_described": n_codes_described,
                "code_share": round(n_codes_described / n_codes, 6) if n_codes else None,
                "events_by_origin": {k: int(v) for k, v in origins.items()}}
    out = pa.table({"cohort_definition_id": index["cohort_definition_id"], "subject_id": index["subject_id"],
                    "index_date": index["index_date"], "text": texts["text"], "n_lines": texts["n_lines"],
                    "truncated": texts["truncated"]}, schema=TEXTS_SCHEMA)
    text_bytes = int(pc.sum(pc.binary_length(out["text"].cast(pa.binary()))).as_py() or 0)
    prov = {"serializer_version": SERIALIZER_VERSION, "group": group, "inclusive": bool(inclusive),
            "index_rule": ("events on or before the index date" if inclusive else
                           "events strictly before the index date"),
            "censoring": "extraction SQL" if source_cdm is not None else "cut at each row's index date",
            "budget": {"max_chars": max_chars} if max_chars is not None else
            ({"max_tokens": max_tokens} if max_tokens is not None else None),
            "rows": out.num_rows, "subject not in source": int(unknown),
            "truncated": int(pc.sum(out["truncated"]).as_py() or 0),
            "text_bytes": text_bytes, "seconds": round(time.perf_counter() - t0, 3)}
    if notes is not None:
        prov["notes"] = {"mode": notes, **note_stats}
    return SerializedTexts(out, coverage, SERIALIZER_VERSION, prov, note_rows)


def _notes(con, events, mode: str) -> tuple[pa.Table | None, dict]:
    """The notes each index row may see (notes_seen): appended to ``lines`` as a last section, re-ranked with the
    coded lines by recency so truncation drops the oldest of either; or, ``pooled``, returned as a table."""
    con.register("notes", events.notes())
    for stmt in _sql("notes.sql"):
        con.execute(stmt)
    n, rows, chars = con.execute("SELECT count(*), count(DISTINCT row_id), coalesce(sum(length(text)), 0) "
                                 "FROM notes_seen").fetchall()[0]
    stats = {"notes": int(n), "rows_with_notes": int(rows), "note_chars": int(chars)}
    if mode == "append":
        con.execute("CREATE TEMP TABLE coded AS SELECT row_id, section, heading, days, line_order, line FROM lines")
        con.execute("DROP TABLE lines")
        con.execute("CREATE TEMP TABLE lines AS SELECT *, row_number() OVER (PARTITION BY row_id ORDER BY days, "
                    "section, line_order) AS rank FROM (SELECT * FROM coded UNION ALL " + _sql("lines_notes.sql")[0]
                    + ")")
        return None, stats
    table = con.sql("SELECT row_id AS row, days, coalesce(title, 'Note') || ': ' || text AS text FROM notes_seen "
                    "ORDER BY row_id, days, time DESC, note_id, text").to_arrow_table()
    return table.cast(NOTE_ROWS_SCHEMA), stats


def dump_text(result: SerializedTexts, directory: str | Path) -> Path:
    """Write the texts (texts.parquet, and notes.parquet for pooled notes) for debugging, warning that the folder
    now holds patient data."""
    from omop_behrt.events import writable_dir, write_table
    folder = writable_dir(directory, "the text dump folder")
    path = folder / "texts.parquet"
    write_table(result.texts, path)
    if result.notes is not None:
        write_table(result.notes, folder / "notes.parquet")
    warnings.warn(f"{path} holds serialised patient records (patient data): keep it inside the site and never "
                  f"share it", UserWarning, stacklevel=2)
    return path

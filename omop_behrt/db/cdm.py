"""An OMOP CDM inside a database: schemas, tables and columns resolved in any case, and the CDM version.

Everything that reads a CDM (the OMOP adapter, cohorts, vocabularies, tasks) asks this class for quoted table
and column names instead of assuming them: Eunomia's columns are UPPER-CASE, 5.3 and 5.4 renamed columns, and
some exports hold a header row as data.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from omop_behrt.db.database import RAW_TEXT_COLUMN, Database, SourceError, check_identifier, load_sql, quote, render

# Columns whose absence means the table cannot be read (the rest are optional and read as NULL).
_REQUIRED_COLUMNS = {"person": ["person_id", "year_of_birth", "gender_concept_id"],
                     "concept": ["concept_id", "vocabulary_id", "concept_code"],
                     "visit_occurrence": ["visit_occurrence_id", "person_id"],
                     "observation_period": ["person_id", "observation_period_start_date",
                                            "observation_period_end_date"]}
_HEADER_AS_DATA = re.compile(r"^column\d+$")

#: the SQL type each DDL type family is read as: ids pass 2^31 at real sites (integer -> BIGINT), and
#: value_as_number must keep its digits (NUMERIC -> DOUBLE PRECISION)
READ_AS = {"integer": "BIGINT", "number": "DOUBLE PRECISION", "date": "DATE", "timestamp": "TIMESTAMP"}
_EXPECTED = {"integer": "is not an integer", "number": "is not a number",
             "date": "is not a date (YYYY-MM-DD)", "timestamp": "is not a timestamp (YYYY-MM-DD HH:MM:SS)"}
_INTEGER_TYPES = {"integer", "int", "int2", "int4", "int8", "bigint", "smallint", "tinyint", "hugeint",
                  "ubigint", "uinteger", "usmallint", "utinyint", "uhugeint", "serial", "bigserial"}
_INTEGER_MAX = {"smallint": 32767, "int2": 32767, "tinyint": 127, "integer": 2147483647, "int": 2147483647,
                "int4": 2147483647}      # else BIGINT's


def type_kind(sqltype: str) -> str:
    """The family of a SQL type name as DuckDB or PostgreSQL spell it: integer, number, date, timestamp, text, other."""
    t = sqltype.strip().lower()
    if t.startswith(("varchar", "text", "character", "char", "string", "bpchar", "nvarchar", "clob")):
        return "text"
    if t.startswith("timestamp") or t == "datetime":
        return "timestamp"
    if t == "date":
        return "date"
    if t in _INTEGER_TYPES:
        return "integer"
    if t.startswith(("numeric", "decimal", "double", "float", "real")):
        return "number"
    return "other"


@lru_cache(maxsize=None)
def ddl_types(version: str) -> dict[str, dict[str, str]]:
    """{table: {column: type family}} of the official OMOP CDM DDL (5.3 or 5.4), shipped in ``sql/ddl/``."""
    v = version if version in ("5.3", "5.4") else "5.4"
    text = load_sql(f"ddl/OMOPCDM_duckdb_{v}_ddl.sql")
    out: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"CREATE TABLE @cdmDatabaseSchema\.(\w+)\s*\((.*?)\);", text, re.S):
        out[m.group(1).lower()] = {c.group(1).lower(): type_kind(c.group(2))
                                   for c in re.finditer(r"^\s*(\w+)\s+(\w+)", m.group(2), re.M)}
    return out


def ddl_kind(table: str, column: str, version: str) -> str | None:
    """The DDL type family of a CDM column (the detected version first, else the other one), None if not in the DDL."""
    for v in (version, "5.3" if version == "5.4" else "5.4"):
        kind = ddl_types(v).get(table, {}).get(column)
        if kind is not None:
            return kind
    return None


def detect_version(cdm_version: str | None, visit_columns: Iterable[str]) -> str:
    """cdm_source.cdm_version when it names 5.x, else from the visit_occurrence columns renamed in 5.4 (else 5.4)."""
    m = re.search(r"5\.(\d)", cdm_version or "")
    if m:
        return f"5.{m.group(1)}"
    cols = {c.lower() for c in visit_columns}
    if cols & {"admitted_from_concept_id", "discharged_to_concept_id"}:
        return "5.4"
    if cols & {"admitting_source_concept_id", "discharge_to_concept_id"}:
        return "5.3"
    return "5.4"


# PostgreSQL has no TRY_CAST (and 15 no pg_input_is_valid): text is cast only once a pattern says it parses.
_S = "[[:space:]]*"
_FINITE = "[-+]?([0-9]{1,200}([.][0-9]{0,200})?|[.][0-9]{1,200})(e[-+]?[0-9]{1,2})?"
_FINITE_RE = f"^{_S}{_FINITE}{_S}$"
_NUMBER_RE = f"^{_S}({_FINITE}|[-+]?inf(inity)?|nan){_S}$"
_TIME = r"([ T]([01]?[0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.][0-9]{1,9})?)?(Z|[-+](0[0-9]|1[0-5])(:?[0-5][0-9])?)?)?"
_DATE_RE = f"^{_S}[0-9]{{4}}-[0-9]{{1,2}}-[0-9]{{1,2}}{_TIME}{_S}$"


def _pg_try_cast(text: str, kind: str, sqltype: str) -> str:
    """A PostgreSQL expression casting the text expression ``text`` to ``sqltype``, NULL where it does not parse."""
    if kind == "integer":       # as DuckDB: decimals and exponents are rounded, half away from zero
        bound = _INTEGER_MAX.get(sqltype.strip().lower(), 9223372036854775807)
        return (f"CASE WHEN {text} ~* '{_FINITE_RE}' THEN CASE WHEN abs(CAST({text} AS NUMERIC)) <= {bound} "
                f"THEN CAST(CAST({text} AS NUMERIC) AS {sqltype}) END END")
    if kind == "number":
        return f"CASE WHEN {text} ~* '{_NUMBER_RE}' THEN CAST({text} AS {sqltype}) END"
    if kind in ("date", "timestamp"):
        y = f"CAST(substring({text} from '([0-9]{{4}})-') AS INTEGER)"
        m = f"CAST(split_part({text}, '-', 2) AS INTEGER)"
        d = f"CAST(substring(split_part({text}, '-', 3) from '^[0-9]+') AS INTEGER)"
        last = (f"CASE WHEN {m} = 2 THEN CASE WHEN {y} % 4 = 0 AND ({y} % 100 <> 0 OR {y} % 400 = 0) THEN 29 "
                f"ELSE 28 END WHEN {m} IN (4, 6, 9, 11) THEN 30 ELSE 31 END")
        return (f"CASE WHEN {text} ~ '{_DATE_RE}' THEN CASE WHEN {y} >= 1 AND {m} BETWEEN 1 AND 12 "
                f"AND {d} BETWEEN 1 AND {last} THEN CAST({text} AS {sqltype}) END END")
    return f"CAST({text} AS {sqltype})"


class OmopCdm:
    """A CDM in a database: resolves schemas, tables and columns (any case) to quoted SQL identifiers."""

    def __init__(self, source: "str | Path | Database", cdm_schema: str | None = None,
                 vocab_schema: str | None = None, results_schema: str | None = None):
        self.db = Database.connect(source)
        self.cdm_schema = check_identifier(cdm_schema or self.db.default_schema, "CDM schema name")
        self.vocab_schema = check_identifier(vocab_schema or self.cdm_schema, "vocabulary schema name")
        self.results_schema = check_identifier(results_schema or self.cdm_schema, "results schema name")
        self.warnings: list[str] = []
        self._tables = {s: self.db.tables(s) for s in {self.cdm_schema, self.vocab_schema}}
        self._columns: dict[tuple[str, str], dict[str, str]] = {}
        self._types: dict[tuple[str, str], dict[str, str]] = {}
        self._exprs: dict[str, set[tuple[str, str]]] = {}    # col() output -> (table, column), for cast()
        self.cdm_version = self._detect_version()
        self.warnings.extend(f"{self.db.description}: file {s['file']} not read: {s['reason']}"
                             for s in self.db.skipped_files)
        self.warnings.extend(self.db.warnings)

    # -- catalogue -------------------------------------------------------------------------------
    def _schema_of(self, table: str) -> str:
        vocab = {"concept", "concept_ancestor", "concept_relationship", "vocabulary", "concept_synonym",
                 "domain", "concept_class", "relationship", "drug_strength", "source_to_concept_map"}
        return self.vocab_schema if table in vocab else self.cdm_schema

    def in_catalogue(self, table: str) -> bool:
        """The table exists (whatever its columns)."""
        return table in self._tables[self._schema_of(table)]

    def has_table(self, table: str) -> bool:
        schema = self._schema_of(table)
        if table not in self._tables[schema]:
            return False
        cols = self.columns(table)
        if cols and all(_HEADER_AS_DATA.match(c) for c in cols):
            msg = (f"table {schema}.{table} has no CDM columns ({', '.join(list(cols)[:3])}, ...): it looks "
                   f"like a header row stored as data; treated as empty")
            if msg not in self.warnings:
                self.warnings.append(msg)
            return False
        return True

    def require(self, table: str) -> None:
        schema = self._schema_of(table)
        if not self.has_table(table):
            present = ", ".join(sorted(self._tables[schema])) or "none"
            raise SourceError(f"CDM table {schema}.{table} is missing or unreadable in {self.db.description} "
                              f"(assumed OMOP CDM {self.cdm_version}); tables present: {present}")
        need = _REQUIRED_COLUMNS.get(table, [])
        cols = self.columns(table)
        missing = [c for c in need if c not in cols]
        if missing:
            raise SourceError(self._missing_column(table, missing[0]))

    def _missing_column(self, table: str, column: str) -> str:
        return (f"CDM table {self._schema_of(table)}.{table} has no column {column} (assumed OMOP CDM "
                f"{self.cdm_version}); columns present: {', '.join(self.columns(table))}")

    def columns(self, table: str) -> dict[str, str]:
        schema = self._schema_of(table)
        key = (schema, table)
        if key not in self._columns:
            stored = self._tables[schema].get(table, table)
            self._columns[key] = self.db.columns(schema, stored)
        return self._columns[key]

    def qtable(self, table: str) -> str:
        schema = self._schema_of(table)
        return self.db.qualify(schema, self._tables[schema][table])

    def col(self, table: str, column: str, alias: str | None = None, optional: bool = False) -> str:
        """The quoted column as stored (``alias."COL"``), NULL for a missing optional column."""
        cols = self.columns(table)
        if column not in cols:
            if optional:
                return "NULL"
            raise SourceError(self._missing_column(table, column))
        q = quote(cols[column], "column name")
        expr = f"{alias}.{q}" if alias else q
        self._exprs.setdefault(expr, set()).add((table, column))
        return expr

    def raw(self, table: str, column: str, alias: str | None = None, optional: bool = False) -> str:
        """The column as the source holds it before typing: for a folder export the text read, else :meth:`col`.

        On a typed view over text exports a value that did not parse is NULL in :meth:`col` but not here, so
        "the value is missing" (raw NULL) and "the value did not parse" (cast_errors) stay apart.
        """
        expr = self.col(table, column, alias, optional)
        stored = self._tables[self._schema_of(table)].get(table, table).lower()
        if expr == "NULL" or column not in self.db.raw_text.get(stored, set()):
            return expr
        return f"struct_extract({alias + '.' if alias else ''}{quote(RAW_TEXT_COLUMN)}, '{column}')"

    def column_type(self, table: str, column: str) -> str | None:
        """The column's type as the database stores it (``BIGINT``, ``VARCHAR``, ``text``...), None if absent."""
        schema = self._schema_of(table)
        key = (schema, table)
        if key not in self._types:
            self._types[key] = self.db.column_types(schema, self._tables[schema].get(table, table))
        return self._types[key].get(column)

    def _stored_kind(self, expr: str, column: tuple[str, str] | None) -> str | None:
        """The type family ``expr`` is stored as, when it is a column this object quoted (else None: unknown)."""
        where = {column} if column is not None else self._exprs.get(expr, set())
        kinds = {type_kind(t) for t in (self.column_type(*c) for c in where) if t is not None}
        return kinds.pop() if len(kinds) == 1 else None

    def _detect_version(self) -> str:
        """cdm_source.cdm_version when recorded, else from the visit columns renamed in 5.4."""
        if self.db.cdm_version is not None:     # a folder of exports: detected once when it was opened
            return self.db.cdm_version
        visit = self.columns("visit_occurrence") if self.has_table("visit_occurrence") else {}
        return detect_version(self.cdm_source_value("cdm_version"), visit)

    def cdm_source_value(self, column: str) -> str | None:
        """One value of the cdm_source table (e.g. ``vocabulary_version``), None when not recorded."""
        if not self.has_table("cdm_source") or column not in self.columns("cdm_source"):
            return None
        v = self.db.scalar(render(load_sql("omop/cdm_source_value.sql"), {
            "column": self.col("cdm_source", column), "cdm_source_table": self.qtable("cdm_source")}))
        return str(v) if v is not None else None

    @property
    def vocabulary_version(self) -> str | None:
        """The Athena vocabulary release the CDM was built with, as cdm_source records it."""
        return self.cdm_source_value("vocabulary_version")

    # -- SQL fragments ---------------------------------------------------------------------------
    def cast(self, expr: str, sqltype: str, column: tuple[str, str] | None = None) -> str:
        """``expr`` cast to ``sqltype``, NULL (never an error) where a text value does not parse.

        DuckDB: TRY_CAST. PostgreSQL: a plain CAST when the stored column already has a compatible type,
        else the text is cast only where a pattern (and, for dates, a month/day check) says it parses.
        ``column`` = (table, column) names the stored column; without it, an ``expr`` made by :meth:`col`
        is recognised, and anything else is treated as text.
        """
        stored, target = self._stored_kind(expr, column), type_kind(sqltype)
        if self.db.dialect in ("duckdb", "spark"):      # Spark's TRY_CAST: NULL where ANSI CAST would fail
            if stored == "text" and target == "timestamp":     # DuckDB's timestamp cast refuses padded text
                expr = f"TRIM({expr})"
            return f"TRY_CAST({expr} AS {sqltype})"
        if (self.db.dialect != "postgresql" or expr.strip().upper() == "NULL"
                or target not in READ_AS or _compatible(stored, target)):
            return f"CAST({expr} AS {sqltype})"
        text = expr if stored == "text" else f"CAST({expr} AS TEXT)"
        return _pg_try_cast(text, target, sqltype)

    def cast_errors(self, table: str, alias: str | None = None, columns: list[str] | None = None) -> str:
        """A SQL expression: NULL when every DDL-typed column of the row (or of ``columns``) parses, else the reasons.

        Each reason names the column, the value (first 40 characters) and what was expected, e.g.
        ``person_id 'abc' is not an integer``; several are joined with '; '. Columns the database already
        stores with their type add nothing, so on a clean typed CDM the expression is a NULL constant.
        """
        present = self.columns(table)
        stored_name = self._tables[self._schema_of(table)].get(table, table)
        raw_text = self.db.raw_text.get(stored_name.lower(), set())
        parts = []
        for c in (columns if columns is not None else list(present)):
            kind = ddl_kind(table, c, self.cdm_version)
            if kind not in READ_AS or c not in present:
                continue
            value = self.col(table, c, alias)
            if c in raw_text:       # a typed view over text exports keeps the text it read beside the value
                raw, parsed = self.raw(table, c, alias), value
            elif (type_kind(self.column_type(table, c) or "") == "text"
                  and self.db.dialect in ("duckdb", "postgresql", "spark")):
                raw, parsed = value, self.cast(value, READ_AS[kind], (table, c))
            else:
                continue
            parts.append(f"CASE WHEN TRIM({raw}) <> '' AND {parsed} IS NULL THEN '{c} ''' || "
                         f"left({raw}, 40) || ''' {_EXPECTED[kind]}' END")
        if not parts:
            return "CAST(NULL AS VARCHAR)"
        if len(parts) == 1:
            return parts[0]
        return f"NULLIF(concat_ws('; ', {', '.join(parts)}), '')"


def _compatible(stored: str | None, target: str) -> bool:
    """A stored type family that a plain CAST turns into ``target`` without failing on any value."""
    return (stored == target or (stored == "integer" and target == "number")
            or (stored == "number" and target == "integer")
            or (stored in ("date", "timestamp") and target in ("date", "timestamp")))

"""An OMOP CDM inside a database: schemas, tables and columns resolved in any case, and the CDM version.

Everything that reads a CDM (the OMOP adapter, cohorts, vocabularies, tasks) asks this class for quoted table
and column names instead of assuming them: Eunomia's columns are UPPER-CASE, 5.3 and 5.4 renamed columns, and
some exports hold a header row as data.
"""
from __future__ import annotations

import re
from pathlib import Path

from .database import Database, SourceError, check_identifier, load_sql, quote, render

# Columns whose absence means the table cannot be read (the rest are optional and read as NULL).
_REQUIRED_COLUMNS = {"person": ["person_id", "year_of_birth", "gender_concept_id"],
                     "concept": ["concept_id", "vocabulary_id", "concept_code"],
                     "visit_occurrence": ["visit_occurrence_id", "person_id"],
                     "observation_period": ["person_id", "observation_period_start_date",
                                            "observation_period_end_date"]}
_HEADER_AS_DATA = re.compile(r"^column\d+$")


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
        self.cdm_version = self._detect_version()

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
        return f"{alias}.{q}" if alias else q

    def _detect_version(self) -> str:
        """cdm_source.cdm_version when recorded, else from the visit columns renamed in 5.4."""
        m = re.search(r"5\.(\d)", self.cdm_source_value("cdm_version") or "")
        if m:
            return f"5.{m.group(1)}"
        if self.has_table("visit_occurrence"):
            cols = self.columns("visit_occurrence")
            if "admitted_from_concept_id" in cols or "discharged_to_concept_id" in cols:
                return "5.4"
            if "admitting_source_concept_id" in cols or "discharge_to_concept_id" in cols:
                return "5.3"
        return "5.4"

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
    def cast(self, expr: str, sqltype: str) -> str:
        """CAST, or TRY_CAST on DuckDB, where exports may hold text that does not parse."""
        return f"TRY_CAST({expr} AS {sqltype})" if self.db.dialect == "duckdb" else f"CAST({expr} AS {sqltype})"

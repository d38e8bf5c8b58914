"""The CDM as CIRCE's SQL reads it, per engine: typed, lower-case views of the CDM tables, and what Spark needs
around sqlrender's Spark SQL (Parquet working tables without Delta Lake, the session views it leaves).
"""
from __future__ import annotations

import re
from typing import Sequence

from omop_behrt.db.database import SourceError, quote

#: where the typed views of the CDM tables live while a cohort is generated (Spark: session temporary views take no
#: schema, so global temporary ones, dropped after)
VIEW_SCHEMA = {"duckdb": "temp.main", "postgresql": "pg_temp", "spark": "global_temp"}


class CdmViews:
    """Typed, lower-case views of the CDM tables, created inside the generating transaction and dropped before
    it commits: CIRCE's SQL compares value_as_number with numbers and joins ids, which fails on a CDM that stores
    them as text (Eunomia does), and PostgreSQL folds CIRCE's unquoted names to lower case."""

    def __init__(self, cdm) -> None:
        from omop_behrt.db.cdm import READ_AS, ddl_types, type_kind
        self.cdm, self.notes, self._select = cdm, {}, {}
        ddl = ddl_types(cdm.cdm_version)
        catalog = ""    # DuckDB: a temp view named like its table must name the table's catalog, or it reads itself
        if cdm.db.duck is not None:
            name = cdm.db.duck.execute("SELECT current_database()").fetchall()[0][0]
            catalog = '"' + name.replace('"', '""') + '".'
        qtable = lambda t: catalog + cdm.qtable(t)  # noqa: E731
        for table, kinds in ddl.items():
            if table == "concept_ancestor" and cdm.has_table("concept") and (
                    not cdm.has_table(table) or cdm.db.scalar(f"SELECT COUNT(*) FROM (SELECT 1 FROM "
                                                              f"{cdm.qtable(table)} LIMIT 1) t") == 0):
                state = "empty" if cdm.has_table(table) else "missing"
                self.notes[table] = (f"the CDM's concept_ancestor table is {state}: concept sets 'with descendants' "
                                     f"match only the concepts they name")
                cid = cdm.col("concept", "concept_id")
                self._select[table] = (f"SELECT CAST({cid} AS BIGINT) AS ancestor_concept_id, CAST({cid} AS BIGINT) "
                                       f"AS descendant_concept_id, 0 AS min_levels_of_separation, 0 AS "
                                       f"max_levels_of_separation FROM {qtable('concept')}")
            elif cdm.has_table(table):
                cols = []
                for c in cdm.columns(table):
                    kind, stored = kinds.get(c), type_kind(cdm.column_type(table, c) or "")
                    expr = cdm.col(table, c)
                    if kind in READ_AS and stored != kind and not (kind == "number" and stored == "integer"):
                        expr = cdm.cast(expr, READ_AS[kind], (table, c))
                    cols.append(f"{expr} AS {quote(c)}")
                self._select[table] = f"SELECT {', '.join(cols)} FROM {qtable(table)}"
            else:
                self.notes[table] = f"the CDM has no {table} table: criteria on it match no one"
                typed = [f"CAST(NULL AS {_SQL_TYPE.get(k, 'VARCHAR')}) AS {quote(c)}" for c, k in kinds.items()]
                self._select[table] = f"SELECT {', '.join(typed)} WHERE 1 = 0"

    def create(self, table: str) -> str:
        if table not in self._select:
            raise SourceError(f"CIRCE's SQL reads {table}, which is not an OMOP CDM {self.cdm.cdm_version} table")
        db = self.cdm.db
        if db.dialect == "spark":       # written in PostgreSQL's dialect, as every statement of ours
            return f"CREATE OR REPLACE GLOBAL TEMPORARY VIEW `{table}` AS {db.translated(self._select[table])}"
        return f"CREATE TEMP VIEW {quote(table)} AS {self._select[table]}"

    def drop(self, table: str) -> str:
        if self.cdm.db.dialect == "spark":
            return f"DROP VIEW IF EXISTS global_temp.`{table}`"
        return f"DROP VIEW IF EXISTS {VIEW_SCHEMA[self.cdm.db.dialect]}.{quote(table)}"


#: sqlrender's Spark SQL creates its working tables as Delta tables (Databricks)
_USING_DELTA = re.compile(r"(\bUSING\s+)DELTA\b", re.IGNORECASE)


def without_delta(statement: str) -> str:
    """A statement of sqlrender's Spark SQL for a Spark without Delta Lake: its working tables as Parquet tables
    (they are only created, filled, read, truncated and dropped)."""
    return _USING_DELTA.sub(r"\1PARQUET", statement)


def session_views(circe_sql: list[str]) -> list[str]:
    """The session views CIRCE's Spark SQL creates and leaves (sqlrender makes some CTEs views: ``ctePersons``)."""
    return sorted({m.group(1) for stmt in circe_sql for m in _CREATE_VIEW.finditer(stmt)})


_CREATE_VIEW = re.compile(r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?TEMP(?:ORARY)?\s+VIEW\s+([\w`]+)",
                          re.IGNORECASE | re.MULTILINE)


def has_delta(spark) -> bool:
    """Whether a Spark session can create Delta tables (Databricks, or Delta Lake's extension configured)."""
    conf = spark.conf
    return bool(conf.get("spark.databricks.clusterUsageTags.sparkVersion", None)) or \
        "delta" in (conf.get("spark.sql.extensions", None) or "").lower()


_SQL_TYPE = {"integer": "BIGINT", "number": "DOUBLE PRECISION", "date": "DATE", "timestamp": "TIMESTAMP"}


def tables_used(statements: Sequence[str], view_schema: str) -> set[str]:
    """The CDM tables CIRCE's statements read through the view schema (lower case)."""
    pattern = re.compile(re.escape(view_schema) + r"\.(\w+)", re.I)
    return {m.group(1).lower() for s in statements for m in pattern.finditer(s)}

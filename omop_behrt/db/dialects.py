"""The project's SQL for every OHDSI database: templates translated from their source dialect by sqlglot, and
CIRCE's OHDSI SQL (SQL Server flavour) by OHDSI's sqlrender (:func:`translate_ohdsi`).

The templates under ``sql/`` are written once, in the subset of PostgreSQL that DuckDB also runs
(:data:`SOURCE`), with ``{name}`` identifier placeholders and ``:name`` bind parameters (``database.render``).
:func:`translate` turns a rendered template into the SQL of a target database: bind parameters stay ``:name``
(SQLAlchemy binds them for each driver; DuckDB gets ``$name`` in ``Database``), quoted identifiers stay
quoted. sqlglot was chosen over SqlRender on measurements (bench/sql_dialects.py): it parses the SQL, so a
construct a target lacks is an error here rather than invalid SQL at the site.

Templates that run on the local DuckDB over Parquet or Arrow (vocabulary mapping, coverage, Table 1, the
leakage check), never in the user's database, are :data:`LOCAL`: DuckDB only. :data:`POSTGRESQL_ONLY` ones
use PostgreSQL's catalogue or upsert and run only there.
"""
from __future__ import annotations

import re
from functools import lru_cache

import sqlglot
from sqlglot import exp

#: the dialect the templates are written in (sqlglot's name): PostgreSQL's, in the subset DuckDB shares
SOURCE = "postgres"

#: target database (OHDSI / SQLAlchemy name) -> sqlglot dialect
TARGETS = {"postgresql": "postgres", "duckdb": "duckdb", "spark": "spark", "bigquery": "bigquery",
           "snowflake": "snowflake", "sql server": "tsql", "redshift": "redshift", "oracle": "oracle"}
#: other names a database goes by (SQLAlchemy dialect names, sqlglot names) -> the TARGETS key
ALIASES = {"mssql": "sql server", "tsql": "sql server", "sqlserver": "sql server", "postgres": "postgresql",
           "databricks": "spark"}

#: templates run by the local DuckDB on Parquet / registered Arrow tables, never in the user's database
LOCAL = frozenset({
    "report/characteristics_codes.sql", "report/characteristics_groups.sql", "report/characteristics_sex.sql",
    "serialize/coverage.sql", "serialize/headers.sql", "serialize/lines_domain.sql", "serialize/lines_visit.sql",
    "serialize/lines_notes.sql", "serialize/macros.sql", "serialize/notes.sql", "serialize/texts.sql",
    "suite/deaths.sql", "suite/labels.sql", "suite/outcomes.sql", "suite/spans.sql", "suite/event_days.sql",
    "tasks/pretraining_overlap.sql",
    "vocab/ancestor_level.sql", "vocab/ancestor_set.sql", "vocab/caliber_codes.sql", "vocab/caliber_map.sql",
    "vocab/concept_tokens.sql", "vocab/coverage_inferred.sql", "vocab/coverage_keys.sql",
    "vocab/coverage_rows.sql", "vocab/csv_map.sql", "vocab/drop.sql", "vocab/icd9_codes.sql",
    "vocab/icd_infer.sql", "vocab/icd_keys.sql", "vocab/icd_nodes.sql", "vocab/key_persons.sql", "vocab/keys.sql",
    "vocab/standard_concepts.sql", "vocab/tokens.sql", "vocab/unmapped_listed.sql", "vocab/unmapped_persons.sql",
    "vocab/unmapped_rare.sql"})
#: templates that use PostgreSQL's catalogue functions or ON CONFLICT and run only on PostgreSQL
POSTGRESQL_ONLY = frozenset({"export/target_privileges_postgresql.sql", "export/unique_keys_postgresql.sql",
                             "export/upsert_model_postgresql.sql"})


#: sqlglot dialects without array values: a bound list (``unnest(CAST(:ids AS BIGINT[]))``) cannot be read there
NO_ARRAYS = frozenset({"tsql", "oracle", "redshift"})


class DialectError(ValueError):
    """A template cannot be translated for a target database (unknown target, or SQL the target cannot express)."""


def target_name(target: str) -> str:
    """The TARGETS key for a database name (``mssql`` -> ``sql server``); DialectError naming the choices."""
    key = ALIASES.get(target.lower(), target.lower())
    if key not in TARGETS:
        raise DialectError(f"unsupported target database {target!r}; expected one of {', '.join(TARGETS)}")
    return key


def dialects_of(template: str) -> tuple[str, ...]:
    """The target databases a template (``"omop/events.sql"``) is translated for."""
    if template in LOCAL:
        return ("duckdb",)
    if template in POSTGRESQL_ONLY:
        return ("postgresql",)
    return tuple(TARGETS)


def _naive_timestamps(node: exp.Expression) -> exp.Expression:
    """Spark: the templates' TIMESTAMP (DuckDB's and PostgreSQL's, without time zone) is TIMESTAMP_NTZ there; Spark's
    own TIMESTAMP is an instant read in the session's time zone."""
    if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.TIMESTAMP:
        return exp.DataType.build("TIMESTAMP_NTZ", dialect="spark")
    return node


def _zipped_explodes(node: exp.Expression) -> exp.Expression:
    """Spark: ``SELECT unnest(a) AS x, unnest(b) AS y`` (PostgreSQL zips the arrays) as ``SELECT
    inline(arrays_zip(a, b)) AS (x, y)``: Spark allows one generator per SELECT."""
    if not isinstance(node, exp.Select) or len(node.expressions) < 2:
        return node
    pairs = [(p.alias, p.this) for p in node.expressions
             if isinstance(p, exp.Alias) and isinstance(p.this, exp.Explode)]
    if len(pairs) != len(node.expressions):
        return node
    args = ", ".join(e.this.sql(dialect="spark") for _, e in pairs)
    zipped = sqlglot.parse_one(f"SELECT inline(arrays_zip({args})) AS ({', '.join(a for a, _ in pairs)})", read="spark")
    node.set("expressions", zipped.expressions)
    return node


def _keep_binds(node: exp.Expression) -> exp.Expression:
    """A ``:name`` placeholder written back as ``:name`` whatever the target's own placeholder style."""
    if isinstance(node, exp.Placeholder) and node.name:
        return exp.var(f":{node.name}")
    return node


def translate(sql: str, target: str, read: str = SOURCE, template: str | None = None) -> str:
    """``sql`` (a rendered template, in ``read``'s dialect) as ``target`` runs it; statements joined by ``;``.

    Cached per distinct (sql, target, read): a template is parsed once per process. ``template`` (or the
    name ``database.load_sql`` attached to the string) names it in the DialectError a failure raises.
    """
    name = template or getattr(sql, "template", None)
    key = target_name(target)
    try:
        return _translate(str(sql), TARGETS[key], read)
    except sqlglot.errors.SqlglotError as e:
        what = f"SQL template {name}" if name else "SQL statement " + repr(str(sql).strip()[:80])
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DialectError(f"{what} does not translate to {key}: {first}") from None


@lru_cache(maxsize=2048)
def _translate(sql: str, write: str, read: str) -> str:
    trees = sqlglot.parse(sql, read=read, error_level=sqlglot.ErrorLevel.RAISE)
    out = []
    for tree in trees:
        if tree is None:
            continue
        if write in NO_ARRAYS and any(t.is_type(exp.DataType.Type.ARRAY) for t in tree.find_all(exp.DataType)):
            raise sqlglot.errors.UnsupportedError(
                "it binds a list as an array (unnest(CAST(:x AS T[])) or an array column), which this database "
                "has no type for")
        tree = tree.transform(_keep_binds)
        if write == "spark":
            tree = tree.transform(_naive_timestamps)
            tree = tree.transform(_zipped_explodes)
        out.append(tree.sql(dialect=write, pretty=True, unsupported_level=sqlglot.ErrorLevel.RAISE))
    return ";\n".join(out)


# -- OHDSI SQL (SQL Server flavour, as CIRCE writes it), through sqlrender ------------------------
_VARIABLE = re.compile(r"@@\([^)]*\)\w+|@@\w+")


@lru_cache(maxsize=None)
def _sqlrender_rules(target: str) -> tuple:
    """sqlrender's patterns for ``target``, each with the literal words it cannot match without."""
    from circe.sqlrender import patterns, translator
    return tuple((tuple(sorted(set(re.findall(r"[a-z_][a-z0-9_]*", _VARIABLE.sub(" ", pattern.lower()))))),
                  translator.parse_search_pattern(pattern), replacement)
                 for pattern, replacement in patterns.load_patterns()[target])


def translate_ohdsi(sql: str, target: str, temp_schema: str | None = None) -> str:
    """``circe.sqlrender.translate(sql, target)``, 5-6x faster: a pattern is tried only when every literal word
    of it occurs in the SQL (sqlrender re-tokenises the whole script for each of its ~90-200 patterns; most
    cannot match cohort SQL). The output is the same (tests compare both); targets whose translation has extra
    steps (BigQuery, Spark, Impala) go to sqlrender unchanged. Where a dialect emulates temporary tables (Spark,
    Oracle, Impala, ...), they are tables of ``temp_schema`` (sqlrender's temp emulation schema; unqualified,
    i.e. in the session's current schema, when None)."""
    from circe import sqlrender
    from circe.sqlrender import patterns, translator
    if target in ("bigquery", "spark", "impala") or target not in patterns.load_patterns():
        return sqlrender.translate(sql, target, temp_emulation_schema=temp_schema)
    session = patterns.get_global_session_id()
    prefix = f"{temp_schema}." if temp_schema else ""      # sqlrender's own rule for its temp emulation schema
    out = translator._strip_blank_lines(sql)
    for words, parsed, replacement in _sqlrender_rules(target):
        low = out.lower()
        if all(w in low for w in words):
            replacement = replacement.replace("%session_id%", session).replace("%temp_prefix%", prefix)
            out = translator._strip_blank_lines(translator.search_and_replace(out, parsed, replacement))
    return out

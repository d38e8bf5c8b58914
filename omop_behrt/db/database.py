"""One connection type for every place a CDM can live: a DuckDB file, a SQLAlchemy URL, a folder of exports.

SQL lives in files under ``sql/`` (shipped in the wheel). Templates name identifiers as ``{name}``
placeholders, filled only with validated, quoted identifiers (or fragments built from them), and values as
``:name`` bind parameters, never formatted in. Query results stream back as Arrow record batches.
"""
from __future__ import annotations

import importlib.util
import re
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_BIND = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
#: a typed view over text exports keeps the text it read in this STRUCT column (see OmopCdm.cast_errors)
RAW_TEXT_COLUMN = "_omop_behrt_raw"


class SourceError(RuntimeError):
    """The data source cannot be used as asked (unreachable, missing schema/table/column); the message says which."""


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise ValueError naming it."""
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ValueError(f"invalid {what} {name!r}: expected letters, digits, '_' or '$', starting with a "
                         f"letter or '_', at most 63 characters")
    return name


def quote(name: str, what: str = "identifier") -> str:
    """Validate and double-quote an identifier (same quoting in DuckDB, PostgreSQL and ANSI SQL)."""
    return '"' + check_identifier(name, what) + '"'


class TemplateSql(str):
    """SQL read from a template, carrying the template's name: what the database translates (dialects.py)."""

    template: str

    def __new__(cls, text: str, template: str) -> "TemplateSql":
        self = super().__new__(cls, text)
        self.template = template
        return self


def statements(sql: str) -> list[str]:
    """A template's ``;``-separated statements, each still carrying the template's name (so each is translated)."""
    parts = [part.strip() for part in sql.split(";") if part.strip()]
    template = getattr(sql, "template", None)
    return [TemplateSql(part, template) for part in parts] if template else parts


def load_sql(name: str) -> TemplateSql:
    """Read a SQL template shipped in ``sql/`` (e.g. ``"omop/events.sql"``)."""
    ref = resources.files("omop_behrt.sql")
    for part in name.split("/"):
        ref = ref / part
    return TemplateSql(ref.read_text(encoding="utf-8"), name)


def render(template: str, fragments: Mapping[str, str]) -> str:
    """Fill ``{name}`` placeholders with identifier fragments (whole-line ``--`` comments are dropped first).

    A placeholder without a fragment is an error, so a template can never run half-rendered.
    """
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in fragments:
            raise KeyError(f"SQL template placeholder {{{key}}} has no value")
        return fragments[key]
    body = "\n".join(line for line in template.splitlines() if not line.lstrip().startswith("--"))
    out = _PLACEHOLDER.sub(sub, body)
    return TemplateSql(out, template.template) if isinstance(template, TemplateSql) else out


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


#: SQLAlchemy dialects OHDSI sites use, and the package that brings each (its name on the package index)
_DIALECT_PACKAGES = {"databricks": "databricks-sqlalchemy", "snowflake": "snowflake-sqlalchemy",
                     "bigquery": "sqlalchemy-bigquery", "redshift": "sqlalchemy-redshift",
                     "redshift+psycopg2": "sqlalchemy-redshift psycopg2-binary", "mssql+pyodbc": "pyodbc",
                     "mssql+pymssql": "pymssql", "oracle+oracledb": "oracledb", "oracle": "oracledb",
                     "mysql+pymysql": "pymysql", "trino": "trino[sqlalchemy]", "postgresql+psycopg2": "psycopg2-binary"}


def _missing_dialect(url: str, error: BaseException) -> str:
    """What to install for a URL whose SQLAlchemy dialect (or driver) is not installed."""
    scheme = url.split("://", 1)[0].lower()
    package = _DIALECT_PACKAGES.get(scheme) or _DIALECT_PACKAGES.get(scheme.split("+", 1)[0])
    hint = f"pip install {package}" if package else f"install the SQLAlchemy dialect for {scheme!r}"
    spark = (" For a Spark / Databricks CDM from Python, pass the SparkSession itself "
             "(omop_behrt.db.spark.SparkDatabase); the CLI reads Spark through spark://." if scheme.startswith(
                 "databricks") else "")
    return f"no SQLAlchemy dialect or driver for {scheme}:// is installed ({error}; {hint}).{spark}"


def is_cdm_source(source) -> bool:
    """Whether ``source`` names a CDM (a URL, a DuckDB file, a folder of exports) rather than an event directory."""
    s = str(source)
    return "://" in s or Path(s).is_file() or (Path(s).is_dir() and not (Path(s) / "events").is_dir())


class Database:
    """A CDM-holding database: DuckDB (file, in-memory over exported files) or any SQLAlchemy engine."""

    def __init__(self, *, duck=None, engine=None, description: str = ""):
        self.duck, self.engine, self.description = duck, engine, description
        self.dialect = "duckdb" if duck is not None else engine.dialect.name
        #: COUNT(*) is free (DuckDB tables keep row counts); over CSV views or a server it is a full scan
        self.cheap_count = False
        #: a folder source: the files it did not expose as tables, each {"file": name, "reason": why}
        self.skipped_files: list[dict] = []
        #: a folder source: {table: files read}, to name the file when reading one fails
        self.files: dict[str, list[Path]] = {}
        #: a folder source: {table: columns whose text as read is kept in RAW_TEXT_COLUMN}
        self.raw_text: dict[str, set[str]] = {}
        #: a folder source: the CDM version detected when opening it (None: detect from the tables)
        self.cdm_version: str | None = None
        #: a folder source: what opening it decided that a user should know (e.g. the date format of a file)
        self.warnings: list[str] = []

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def connect(cls, source: "str | Path | Database", read_only: bool = True) -> "Database":
        """Open a DuckDB file, a folder of CSV/CSV.gz/Parquet table exports, a SQLAlchemy URL, or Spark (a
        SparkSession, or ``spark://local[2]?database=NAME``: see omop_behrt.db.spark)."""
        if isinstance(source, Database):
            return source
        from omop_behrt.db.spark import SparkDatabase, is_spark_session
        if is_spark_session(source):
            return SparkDatabase(source)
        s = str(source)
        if s.startswith("spark://"):
            return SparkDatabase.from_url(s)
        if "://" in s:
            return cls._connect_url(s)
        p = Path(s)
        if p.is_dir():
            if not read_only:
                raise SourceError(f"{p} is a folder of CDM exports, read through an in-memory database: a table "
                                  f"written there (a cohort, embeddings) would be gone when this command ends. "
                                  f"Load the exports into a DuckDB file or a server, or generate and use the "
                                  f"cohort in one command (`task plp --target-json ... --outcome-json ...`, a "
                                  f"study spec), or in Python pass one open Database.connect(folder) to every step")
            from omop_behrt.db.cdm_exports import open_folder
            return open_folder(p)
        if p.is_file():
            import duckdb
            with open(p, "rb") as fh:
                is_duckdb = fh.read(12)[8:12] == b"DUCK"
            if not is_duckdb and p.stat().st_size > 0:
                raise SourceError(f"{p} is not a DuckDB database, a folder of CDM exports or a SQLAlchemy URL; "
                                  f"for FHIR data pass a Bundle/NDJSON file or folder (--format fhir)")
            try:
                con = quiet(duckdb.connect(str(p), read_only=read_only))
            except duckdb.Error as e:
                raise SourceError(f"cannot open {p} as a DuckDB database: {e}") from None
            db = cls(duck=con, description=str(p))
            db.cheap_count = True
            return db
        if not read_only and p.suffix in (".duckdb", ".db"):
            import duckdb
            p.parent.mkdir(parents=True, exist_ok=True)
            return cls(duck=quiet(duckdb.connect(str(p))), description=str(p))
        raise SourceError(f"source {s!r} is neither an existing DuckDB file, a folder of CDM table exports, "
                          f"nor a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db)")

    @classmethod
    def _connect_url(cls, url: str) -> "Database":
        import sqlalchemy as sa
        if url.startswith("duckdb://"):
            import duckdb
            path = url[len("duckdb://"):].lstrip("/") or ":memory:"
            if url.startswith("duckdb:////"):
                path = "/" + path
            return cls(duck=quiet(duckdb.connect(path)), description=url)
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]   # psycopg 3 is the driver we ship
        if url.startswith("postgresql+psycopg://") and importlib.util.find_spec("psycopg") is None:
            raise SourceError("PostgreSQL sources need psycopg 3: pip install 'omop-behrt[postgres]'")
        try:
            engine = sa.create_engine(url, pool_pre_ping=True)
            with engine.connect():
                pass
        except (sa.exc.NoSuchModuleError, ImportError) as e:   # a dialect or driver that is not installed
            raise SourceError(f"cannot connect to {_redact(url)}: {_missing_dialect(url, e)}") from None
        except Exception as e:  # driver-specific exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SourceError(f"cannot connect to {_redact(url)}: {first}") from None
        return cls(engine=engine, description=_redact(url))

    def _file_error(self, error: Exception, sql: str) -> Exception:
        """A DuckDB error while reading a folder's files, as one SourceError naming the file (else the error)."""
        if not self.files:
            return error
        from omop_behrt.db.cdm_exports import explain_read_error
        return explain_read_error(self, error, sql) or error

    def limit_memory(self, limit: str | None, temp_dir: Path | None = None, threads: int | None = None) -> None:
        """Bound an in-process DuckDB's memory (it spills big joins/aggregates to ``temp_dir``); servers: no-op."""
        if self.duck is None:
            return
        if limit is not None:
            if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", limit.strip()):
                raise ValueError(f"memory limit must look like '2GB' or '512MB', got {limit!r}")
            self.duck.execute(f"SET memory_limit = {sql_literal(limit.strip())}").fetchall()
        if temp_dir is not None:
            Path(temp_dir).mkdir(parents=True, exist_ok=True)
            self.duck.execute(f"SET temp_directory = {sql_literal(str(temp_dir))}").fetchall()
        if threads is not None:
            self.duck.execute(f"SET threads = {int(threads)}").fetchall()

    # -- introspection ---------------------------------------------------------------------------
    @property
    def default_schema(self) -> str:
        if self.duck is not None:
            return "main"
        import sqlalchemy as sa
        return sa.inspect(self.engine).default_schema_name or "public"

    def schemas(self) -> list[str]:
        if self.duck is not None:
            return [r[0] for r in self.duck.execute(
                "SELECT DISTINCT schema_name FROM information_schema.schemata ORDER BY 1").fetchall()]
        import sqlalchemy as sa
        return sa.inspect(self.engine).get_schema_names()

    def tables(self, schema: str) -> dict[str, str]:
        """Tables and views of ``schema`` as {lower-case name: name as stored}; SourceError if no such schema."""
        check_identifier(schema, "schema name")
        if self.duck is not None:
            rows = self.duck.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $s", {"s": schema}
            ).fetchall()
            names = [r[0] for r in rows]
        else:
            import sqlalchemy as sa
            insp = sa.inspect(self.engine)
            names = insp.get_table_names(schema=schema) + insp.get_view_names(schema=schema)
        if not names and schema not in self.schemas():
            raise SourceError(f"schema {schema!r} not found in {self.description}; "
                              f"schemas present: {', '.join(self.schemas())}")
        return {n.lower(): n for n in names}

    def columns(self, schema: str, table: str) -> dict[str, str]:
        """Columns of a table as {lower-case name: name as stored}, in table order."""
        if self.duck is not None:
            rows = self.duck.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $s AND table_name = $t "
                "ORDER BY ordinal_position", {"s": schema, "t": table}).fetchall()
            return {r[0].lower(): r[0] for r in rows if r[0] != RAW_TEXT_COLUMN}
        import sqlalchemy as sa
        return {c["name"].lower(): c["name"] for c in sa.inspect(self.engine).get_columns(table, schema=schema)}

    def column_types(self, schema: str, table: str) -> dict[str, str]:
        """Column types of a table as {lower-case name: type as the database names it}, e.g. BIGINT, text."""
        sql = ("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = :s "
               "AND table_name = :t ORDER BY ordinal_position")
        with self.transaction() as tx:
            rows = tx.execute(sql, {"s": schema, "t": table})
        return {r[0].lower(): str(r[1]) for r in rows if r[0] != RAW_TEXT_COLUMN}

    def qualify(self, schema: str, table: str) -> str:
        return f"{quote(schema, 'schema name')}.{quote(table, 'table name')}"

    # -- running SQL -----------------------------------------------------------------------------
    def _duck_sql(self, sql: str) -> str:
        return _BIND.sub(r"$\1", self.translated(sql))

    def translated(self, sql: str) -> str:
        """A template's SQL as this database runs it. DuckDB and PostgreSQL run the templates as written (the
        dialect they share; tests/golden_sql checks each parses and translates): a same-dialect sqlglot round
        trip only re-printed them, at 0.1-0.8 s a template, most of a small extraction's time. Engines with
        another dialect translate here (:class:`omop_behrt.db.spark.SparkDatabase`)."""
        return sql

    def stream(self, sql: str, params: Mapping[str, Any] | None = None, schema: pa.Schema | None = None,
               batch_rows: int = 1_000_000) -> Iterator[pa.RecordBatch]:
        """Run a query inside the database and yield its result as Arrow batches (memory stays bounded)."""
        params = dict(params or {})
        if self.duck is not None:
            import duckdb
            try:
                rel = self.duck.sql(self._duck_sql(sql), params=params or None)
                reader, empty = arrow_reader(rel, batch_rows), True
                for batch in prefetch(reader):
                    empty = False
                    yield batch.cast(schema) if schema is not None else batch
                if empty and schema is None:     # no row: still the query's columns (as the server path)
                    yield pa.RecordBatch.from_pylist([], schema=reader.schema)
            except (duckdb.Error, OSError, pa.ArrowException) as e:   # Arrow's stream re-raises as OSError
                raise self._file_error(e, sql) from None
            return
        import sqlalchemy as sa
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                sa.text(self.translated(sql)), params)
            names = list(result.keys())
            empty = True
            for part in result.partitions(batch_rows):
                empty = False
                cols = list(zip(*part))
                if schema is not None:
                    arrays = [pa.array(c, type=f.type) for c, f in zip(cols, schema)]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
                else:
                    yield pa.RecordBatch.from_arrays([pa.array(c) for c in cols], names=names)
            if empty and schema is None:     # no row: still the query's columns, as DuckDB gives them
                yield pa.RecordBatch.from_arrays([pa.array([], pa.null()) for _ in names], names=names)

    def query(self, sql: str, params: Mapping[str, Any] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        """Run a query and return the whole result as an Arrow table (for small results)."""
        batches = list(self.stream(sql, params, schema))
        if batches:
            return pa.Table.from_batches(batches)
        if schema is not None:
            return schema.empty_table()
        return pa.table({})

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        """The first value of a query's first row (None when it returns no row)."""
        rows = self._alone(sql, params)
        return rows[0][0] if rows else None

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement in its own transaction."""
        self._alone(sql, params)

    def _alone(self, sql: str, params: Mapping[str, Any] | None) -> list[tuple]:
        """One statement in its own transaction. DuckDB commits each statement by itself when no transaction is
        open, so a single statement skips the BEGIN and COMMIT round trips (two of every three statements of a
        small extraction)."""
        if self.duck is not None and ";" not in sql.strip().rstrip(";"):
            return Transaction(self, None).execute(sql, params)
        with self.transaction() as tx:
            return tx.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator["Transaction"]:
        """One transaction: what runs inside commits together, or (on any error) not at all."""
        if self.duck is not None:
            self.duck.execute("BEGIN TRANSACTION").fetchall()
            try:
                yield Transaction(self, None)
            except BaseException:
                self.duck.execute("ROLLBACK").fetchall()
                raise
            self.duck.execute("COMMIT").fetchall()
            return
        with self.engine.begin() as conn:
            yield Transaction(self, conn)

    def close(self) -> None:
        if self.duck is not None:
            self.duck.close()
        else:
            self.engine.dispose()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Transaction:
    """Statements and bulk inserts inside one :meth:`Database.transaction`."""

    def __init__(self, db: Database, conn):
        self.db, self.conn = db, conn

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        if self.conn is None:
            import duckdb
            try:
                return self.db.duck.execute(self.db._duck_sql(sql), dict(params or {}) or None).fetchall()
            except duckdb.Error as e:
                raise self.db._file_error(e, sql) from None
        import sqlalchemy as sa
        result = self.conn.execute(sa.text(self.db.translated(sql)), dict(params or {}))
        return list(result.fetchall()) if result.returns_rows else []

    def execute_raw(self, sql: str) -> None:
        """Run one statement exactly as written, without bind parameters (SQL generated by another tool, e.g.
        CIRCE's, whose text is not one of our templates)."""
        if self.conn is None:
            self.db.duck.execute(sql).fetchall()
        else:
            self.conn.exec_driver_sql(sql)

    def insert_arrow(self, qualified_table: str, table: pa.Table) -> None:
        """Bulk-insert an Arrow table (columns by name): DuckDB scans it, PostgreSQL gets it through COPY."""
        cols = ", ".join(quote(c, "column name") for c in table.column_names)
        if self.conn is None:
            self.db.duck.register("_omop_behrt_insert", table)
            try:
                self.db.duck.execute(f"INSERT INTO {qualified_table} ({cols}) SELECT {cols} FROM _omop_behrt_insert"
                                     ).fetchall()
            finally:
                self.db.duck.unregister("_omop_behrt_insert")
            return
        raw = self.conn.connection.driver_connection
        if self.db.dialect == "postgresql" and hasattr(raw, "cursor") and hasattr(raw.cursor(), "copy"):
            with raw.cursor() as cur, cur.copy(f"COPY {qualified_table} ({cols}) FROM STDIN") as cp:
                for batch in table.to_batches(50_000):
                    for row in zip(*(c.to_pylist() for c in batch.columns)):
                        cp.write_row(row)
            return
        import sqlalchemy as sa
        names = table.column_names
        binds = ", ".join(f":{n}" for n in names)
        for batch in table.to_batches(10_000):
            self.conn.execute(sa.text(f"INSERT INTO {qualified_table} ({cols}) VALUES ({binds})"), batch.to_pylist())


def prefetch(batches: Iterator[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """Produce the next batches in a background thread while the caller works on this one.

    DuckDB computes a batch and the caller writes the previous one at the same time (both release the GIL);
    ``depth`` bounds how many batches wait in memory.
    """
    import queue
    import threading
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def produce() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    t = threading.Thread(target=produce, daemon=True, name="omop-behrt-prefetch")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def arrow_reader(rel, batch_rows: int = 1_000_000) -> pa.RecordBatchReader:
    """A streaming Arrow reader over a DuckDB relation (DuckDB 2 renamed fetch_arrow_reader)."""
    fetch = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader
    return fetch(batch_rows)


def quiet(con):
    """A DuckDB connection we opened (for a source, a sort, a mapping), without DuckDB's own progress bar: it
    prints to stdout whatever ``progress`` asked for; our commands show their own."""
    con.execute("SET enable_progress_bar = false").fetchall()
    return con


def sql_literal(value: str) -> str:
    """A SQL string literal where a bind parameter cannot go: DDL (a DuckDB view over a file path), or a constant
    reason text built from our own column names and ISO dates."""
    return "'" + value.replace("'", "''") + "'"

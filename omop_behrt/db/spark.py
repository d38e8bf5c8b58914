"""A CDM held in Apache Spark (local mode, a cluster, Databricks): the project's SQL run as Spark SQL.

:class:`SparkDatabase` is a :class:`~omop_behrt.db.database.Database` over a SparkSession and one Spark database
(the CDM schema): the catalogue comes from Spark's, every statement is translated from the templates'
PostgreSQL dialect by sqlglot (``dialects.translate(..., "spark")``) and bound with Spark's own ``:name``
parameters. Small results (counts, concept names) come back as Arrow; the events themselves never reach the
driver: ``adapters.omop_spark`` has the executors write the event directory's shards.

``spark://MASTER?database=NAME`` (MASTER: ``local[2]``, ``local[*]`` or ``host:port`` of a standalone master)
opens a session of this process (or uses the one it already runs); ``&parquet=DIR`` first registers each
``DIR/<table>.parquet`` as a table of NAME (a local session keeps no catalogue between processes);
``&partitions=N`` sets how many person-hash partitions write the events. A SparkSession passed in is used as it
is and never stopped here.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qs, unquote

import pyarrow as pa

from omop_behrt.db.database import Database, SourceError, check_identifier, quote, sql_literal
from omop_behrt.lock import exclusive_lock

log = logging.getLogger(__name__)

__all__ = ["SparkDatabase", "is_spark_session", "local_session", "load_duckdb_cdm"]


def is_spark_session(obj: Any) -> bool:
    """Whether ``obj`` is a SparkSession (checked by type name: pyspark is imported only when one is used)."""
    return any(c.__name__ == "SparkSession" and c.__module__.startswith("pyspark") for c in type(obj).__mro__)


#: settings for small CDMs and tests: a cold JVM spends most of a small query compiling (C1 only, no codegen)
QUICK_CONF = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
              "spark.sql.codegen.wholeStage": "false", "spark.sql.shuffle.partitions": "2"}


def local_session(master: str = "local[2]", driver_memory: str = "1g", app: str = "omop-behrt",
                  conf: dict | None = None):
    """A SparkSession for this process (workers run this Python, so they import omop_behrt as it is here);
    ``conf``: more Spark settings (e.g. :data:`QUICK_CONF`)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SourceError("Spark sources need pyspark (and a Java 17+ runtime): pip install 'omop-behrt[spark]'"
                          ) from None
    builder = (SparkSession.builder.master(master).appName(app)
               .config("spark.driver.memory", driver_memory)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _check_url_options(url: str, host: str, query: dict[str, str]) -> None:
    """A ``spark://`` URL's master and options, checked before a JVM starts: one line naming what is wrong."""
    if not re.fullmatch(r"local(\[(\*|[1-9]\d*)\])?|[\w.-]+:\d{1,5}", host):
        raise SourceError(f"{url}: master {host!r} is neither local, local[N], local[*] nor host:port")
    if "database" in query:
        try:
            check_identifier(query["database"], "Spark database name")
        except ValueError as e:
            raise SourceError(f"{url}: {e}") from None
    if "partitions" in query and not (query["partitions"].isdigit() and int(query["partitions"]) >= 1):
        raise SourceError(f"{url}: partitions must be a whole number >= 1, got {query['partitions']!r}")
    if "driver_memory" in query and not re.fullmatch(r"[1-9]\d*[kmgt]?", query["driver_memory"].lower()):
        raise SourceError(f"{url}: driver_memory must be like 512m or 2g, got {query['driver_memory']!r}")
    if "parquet" in query and not Path(query["parquet"]).is_dir():
        raise SourceError(f"{url}: parquet folder {query['parquet']} does not exist")


class SparkDatabase(Database):
    """A CDM in one Spark database (``database`` plays the schema); queries run in Spark, results come as Arrow."""

    def __init__(self, session, database: str = "default", *, partitions: int | None = None,
                 owns_session: bool = False, description: str | None = None):
        super().__init__(engine=SimpleNamespace(dialect=SimpleNamespace(name="spark")),
                         description=description or f"spark:{database}")
        self.engine = None
        self.spark = session
        self.database = check_identifier(database, "Spark database name")
        #: how many partitions (hash of the person) the executors write the events in; None: the default parallelism
        self.partitions = partitions
        self._owns_session = owns_session
        self._schemas: dict[tuple[str, str], list] = {}

    @classmethod
    def from_url(cls, url: str) -> "SparkDatabase":
        """``spark://local[2]?database=cdm`` (or ``spark://host:7077?database=cdm``): a session of this process."""
        rest = url.split("://", 1)[1]          # not urlsplit: it reads local[2] as an IPv6 address
        host, _, qs = rest.partition("?")
        host = host.rstrip("/") or "local[*]"
        query = {k: v[-1] for k, v in parse_qs(qs).items()}
        master = host if host.startswith("local") else f"spark://{host}"
        unknown = set(query) - {"database", "partitions", "driver_memory", "parquet"}
        if unknown:
            raise SourceError(f"{url}: unknown option(s) {', '.join(sorted(unknown))}; expected database, "
                              f"partitions, driver_memory, parquet")
        _check_url_options(url, host, query)
        from pyspark.sql import SparkSession
        running = SparkSession.getActiveSession()      # a session this process already runs is used, never stopped
        session = running or local_session(master, query.get("driver_memory", "1g"))
        parts_n = int(query["partitions"]) if "partitions" in query else None
        if "parquet" in query:     # a folder of <table>.parquet: registered as the database's tables
            register_parquet(session, query.get("database", "default"), query["parquet"])
        return cls(session, query.get("database", "default"), partitions=parts_n, owns_session=running is None,
                   description=f"spark://{host}?database={query.get('database', 'default')}")

    # -- catalogue -------------------------------------------------------------------------------
    @property
    def default_schema(self) -> str:
        return self.database

    def schemas(self) -> list[str]:
        return sorted(d.name for d in self.spark.catalog.listDatabases())

    def tables(self, schema: str) -> dict[str, str]:
        check_identifier(schema, "schema name")
        if not self.spark.catalog.databaseExists(schema):
            raise SourceError(f"database {schema!r} not found in {self.description}; databases present: "
                              f"{', '.join(self.schemas())}")
        return {t.name.lower(): t.name for t in self.spark.catalog.listTables(schema)}

    def _fields(self, schema: str, table: str):
        key = (schema, table)
        if key not in self._schemas:        # one analysis per table (columns and column_types both ask)
            self._schemas[key] = self.spark.table(self.qualify(schema, table).replace('"', "`")).schema.fields
        return self._schemas[key]

    def columns(self, schema: str, table: str) -> dict[str, str]:
        return {f.name.lower(): f.name for f in self._fields(schema, table)}

    def column_types(self, schema: str, table: str) -> dict[str, str]:
        return {f.name.lower(): f.dataType.simpleString() for f in self._fields(schema, table)}

    # -- running SQL -----------------------------------------------------------------------------
    def translated(self, sql: str) -> str:
        """Any statement (template or not: all are written in PostgreSQL's dialect) as Spark SQL."""
        from omop_behrt.db.dialects import translate
        return translate(sql, "spark", template=getattr(sql, "template", None))

    def frame(self, sql: str, params: Mapping[str, Any] | None = None):
        """The query as a lazy Spark DataFrame (nothing runs until an action)."""
        if getattr(sql, "template", None) == "omop/declared_unique.sql":
            # Spark tables declare no keys (Delta's are informational): nothing is declared unique
            return self.spark.sql("SELECT 1 AS declared WHERE 1 = 0")
        args = {k: _arg(v) for k, v in dict(params or {}).items()}
        return self.spark.sql(self.translated(sql), args=args or None)

    def stream(self, sql: str, params: Mapping[str, Any] | None = None, schema: pa.Schema | None = None,
               batch_rows: int = 1_000_000) -> Iterator[pa.RecordBatch]:
        """A (small) query's result as Arrow batches; the events go through :meth:`frame` and the executors."""
        table = arrow_of(self.frame(sql, params))
        if schema is not None:
            table = table.select(schema.names).cast(schema)
        batches = table.to_batches(batch_rows)
        yield from batches or [pa.RecordBatch.from_pylist([], schema=table.schema)]

    @contextmanager
    def transaction(self) -> Iterator["SparkStatements"]:
        """Spark SQL has no transactions: statements run one by one, except row deletes on a table that has none
        (a plain Parquet/Hive table, not Delta), which are applied together when the block ends (see
        :class:`SparkStatements`). A block that fails applies none of them and drops the tables and views it
        created: what a rollback would have removed."""
        tx = SparkStatements(self)
        try:
            yield tx
        except BaseException:
            tx.rollback()
            raise
        tx.flush()

    def close(self) -> None:
        if self._owns_session:
            self.spark.stop()


#: a statement (after its leading comments) that deletes or inserts rows
_WRITE = re.compile(r"\s*(?:--[^\n]*\n\s*)*(?:DELETE|INSERT)\b", re.IGNORECASE)
#: a statement that creates a table or a view, with its name (not IF NOT EXISTS: that one may have been there)
_CREATE = re.compile(r"\s*(?:--[^\n]*\n\s*)*CREATE\s+(?:OR\s+REPLACE\s+)?(GLOBAL\s+)?(?:TEMP(?:ORARY)?\s+)?"
                     r"(TABLE|VIEW)\s+(?!IF\s+NOT\s+EXISTS\b)([\w.`]+)", re.IGNORECASE)


class SparkStatements:
    """What :meth:`Database.transaction` yields, for Spark: each statement runs on its own.

    A ``DELETE FROM t WHERE ...`` on a table without row-level deletes (Spark's own Parquet/Hive tables; Delta
    tables delete for real) is held back, as are the block's ``INSERT INTO t ... SELECT`` rows: when the block
    ends, ``t`` is rewritten once as its kept rows plus the inserted ones (checkpointed first, so the overwrite
    never reads the table it replaces). A cohort rebuilt this way replaces its rows as on every other engine.
    Spark has no lock of its own, so the read-and-rewrite holds one (:func:`rewrite_lock`): two writers of a table
    take turns and the second reads the first's rows, never losing them. A table that deletes rows itself (Delta)
    commits a delete and the inserts after it apart, so a block that deletes from one holds its lock to the end.
    """

    def __init__(self, db: SparkDatabase):
        self.db = db
        self._deletes: dict[str, list[tuple[str, dict]]] = {}   # table -> held-back (WHERE, params)
        self._inserts: dict[str, list] = {}                     # table -> DataFrames of rows inserted since
        self._created: list[str] = []                           # DROP statements for what the block created
        self._held = ExitStack()                                # rewrite locks of tables that delete for real
        self._locked: set[str] = set()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        if _WRITE.match(sql) and self._hold(self.db.translated(sql), params):
            return []
        rows = [tuple(r) for r in self.db.frame(sql, params).collect()]
        self._note_created(sql)
        return rows

    def execute_raw(self, sql: str) -> None:
        """A statement already in Spark SQL (e.g. CIRCE's, translated by sqlrender), held back as :meth:`execute`'s
        when it deletes from a table that cannot."""
        if _WRITE.match(sql) and self._hold(sql, None):
            return
        self.db.spark.sql(sql).collect()
        self._note_created(sql)

    def _note_created(self, sql: str) -> None:
        m = _CREATE.match(sql)
        if m:
            glob, kind, name = m.groups()
            self._created.append(f"DROP {kind.upper()} IF EXISTS " + ("global_temp." if glob else "") + name)

    def rollback(self) -> None:
        """After a failure: apply none of the held-back writes, and drop what the block created, newest first
        (each on its own: one that fails does not keep the others)."""
        self._deletes.clear()
        self._inserts.clear()
        try:
            for drop in reversed(self._created):
                try:
                    self.db.spark.sql(drop).collect()
                except Exception:  # noqa: S110 - best effort; the block's own error is the one raised
                    pass
            self._created.clear()
        finally:
            self._release()

    def _release(self) -> None:
        self._held.close()
        self._locked.clear()

    def _hold(self, text: str, params: Mapping[str, Any] | None) -> bool:
        """Hold back a DELETE (Spark SQL ``text``) the table cannot run, or an INSERT into a table with one held;
        True if held."""
        import sqlglot
        from sqlglot import exp
        try:
            stmt = sqlglot.parse_one(text, read="spark")
        except sqlglot.errors.ParseError:
            return False
        args = {k: _arg(v) for k, v in dict(params or {}).items()}
        if isinstance(stmt, exp.Delete):
            table = stmt.this.sql(dialect="spark")
            if table in self._locked:
                return False
            if table not in self._deletes and self._deletes_rows(table):
                # a table that deletes rows itself (Delta) commits the delete and the inserts apart: the block
                # holds its rewrite lock to the end, so that two rebuilds never interleave into duplicate rows
                self._held.enter_context(rewrite_lock(self.db.spark, table))
                self._locked.add(table)
                return False
            where = stmt.args.get("where")
            self._deletes.setdefault(table, []).append((where.this.sql(dialect="spark") if where else "TRUE", args))
            return True
        if isinstance(stmt, exp.Insert) and isinstance(stmt.expression, exp.Query):
            target = stmt.this.this if isinstance(stmt.this, exp.Schema) else stmt.this
            table = target.sql(dialect="spark")
            if table not in self._deletes:
                return False
            cols = [c.name for c in stmt.this.expressions] if isinstance(stmt.this, exp.Schema) else None
            query = stmt.expression.copy()
            ctes = next((k for k in ("with_", "with") if stmt.args.get(k) is not None), None)   # sqlglot's name
            if ctes:                                   # WITH ... INSERT INTO t SELECT: the CTEs go to the SELECT
                query.set(ctes, stmt.args[ctes].copy())
            rows = self.db.spark.sql(query.sql(dialect="spark"), args=args or None)
            if cols:
                rows = rows.toDF(*cols)
            self._inserts.setdefault(table, []).append(rows.localCheckpoint(eager=True))
            return True
        return False

    def _deletes_rows(self, table: str) -> bool:
        """Whether ``table`` deletes rows itself (Delta and other v2 tables do; Spark's Parquet tables do not)."""
        try:
            self.db.spark.sql(f"DELETE FROM {table} WHERE FALSE").collect()
            return True
        except Exception as e:
            if "UNSUPPORTED_FEATURE" in str(e) or "does not support DELETE" in str(e):
                return False
            raise

    def flush(self) -> None:
        """Rewrite each table with held-back deletes: its kept rows plus the rows inserted after them, read and
        written under the table's :func:`rewrite_lock` (read fresh: another writer may have rewritten it)."""
        try:
            for table, deletes in self._deletes.items():
                with rewrite_lock(self.db.spark, table):
                    rows = self._kept_and_inserted(table, deletes)
                    rows.write.insertInto(table, overwrite=True)
                    for i in range(len(deletes)):
                        self.db.spark.catalog.dropTempView(f"omop_behrt_kept_{i}")
        finally:
            self._deletes.clear()
            self._inserts.clear()
            self._release()

    def _kept_and_inserted(self, table: str, deletes: list[tuple[str, dict]]):
        """The table's rows as they are now (not as this session last listed its files), less the deleted, plus
        the inserted; checkpointed, so that the overwrite never reads the files it replaces."""
        spark = self.db.spark
        spark.catalog.refreshTable(table)
        current = spark.table(table)
        for i, (where, args) in enumerate(deletes):
            view = f"omop_behrt_kept_{i}"
            current.createOrReplaceTempView(view)
            current = spark.sql(f"SELECT * FROM {view} WHERE NOT COALESCE(({where}), FALSE)", args=args or None)
        columns = spark.table(table).columns
        for rows in self._inserts.get(table, []):
            current = current.unionByName(rows.select(*[c for c in columns if c in rows.columns]),
                                          allowMissingColumns=True)
        return current.select(*columns).localCheckpoint(eager=True)


#: how long a rewrite waits for another writer of the same table (a cohort rebuild takes seconds to minutes)
REWRITE_LOCK_TIMEOUT = 600.0
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def table_location(spark, table: str) -> str | None:
    """Where a catalogue table keeps its files (``file:/...``, ``s3://...``), from ``DESCRIBE TABLE EXTENDED``."""
    for row in spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect():
        if (row[0] or "").strip() == "Location":
            return (row[1] or "").strip() or None
    return None


@contextmanager
def rewrite_lock(spark, table: str, timeout: float | None = None) -> Iterator[None]:
    """One rewrite of a Spark table at a time: a lock per table location within this process, and an OS file lock
    beside a local location (``.<name>.omop_behrt.lock``) across processes. A location on a remote store (s3://,
    abfss://, dbfs:) has no file lock: there, one process writes a table at a time, and a warning says so.
    After ``timeout`` s (default :data:`REWRITE_LOCK_TIMEOUT`) of waiting: a SourceError naming the table."""
    timeout = REWRITE_LOCK_TIMEOUT if timeout is None else timeout
    location = table_location(spark, table) or ""
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(location or table, threading.Lock())
    with ExitStack() as held:
        if not thread_lock.acquire(timeout=timeout):
            raise SourceError(f"Spark table {table}: another writer in this process held it for {timeout:.0f} s")
        held.callback(thread_lock.release)
        local = re.fullmatch(r"(?:file:)?(/[^?#]*)", location)
        path = Path(unquote(local.group(1))).resolve() if local else None
        if path is not None and path.parent.is_dir():
            held.enter_context(exclusive_lock(
                path.parent / f".{path.name}.omop_behrt.lock", timeout,
                f"Spark table {table} ({path}): another process has been rewriting it for {timeout:.0f} s",
                SourceError))
        else:
            log.warning("Spark table %s lives at %s: no lock across processes there; run one writer of it at a "
                        "time", table, location or "no location Spark reports")
        yield


def arrow_of(df) -> pa.Table:
    """A DataFrame's rows as one Arrow table (small results only), timestamps without a time zone."""
    table = df.toArrow()
    fields = [pa.field(f.name, _plain(f.type)) for f in table.schema]
    return table.cast(pa.schema(fields))


def _plain(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us")
    return t


def _arg(value: Any):
    """A bound value as Spark's ``args`` takes it (a list becomes a typed array column)."""
    if isinstance(value, (list, tuple)):
        from pyspark.sql import functions as F
        return F.array(*[F.lit(v) for v in value]) if value else F.array()
    return value


# -- loading a CDM into Spark ------------------------------------------------------------------------
def load_duckdb_cdm(session, duckdb_file: str | Path, database: str, parquet_dir: str | Path, *,
                    schema: str = "main", tables: list[str] | None = None) -> list[str]:
    """Copy the tables of a DuckDB CDM to Parquet (DuckDB's COPY) and register them as tables of ``database``.

    Column names and types stay as stored (Eunomia's UPPER-CASE, DATE, TIMESTAMP read back as TIMESTAMP_NTZ).
    Returns the table names registered.
    """
    import duckdb
    check_identifier(database, "Spark database name")
    parquet_dir = Path(parquet_dir)
    parquet_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(duckdb_file), read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = $s "
                                           "ORDER BY 1", {"s": schema}).fetchall()]
        names = [n for n in names if tables is None or n.lower() in {t.lower() for t in tables}]
        for name in names:
            target = parquet_dir / f"{name.lower()}.parquet"
            con.execute(f"COPY (SELECT * FROM {quote(schema)}.{quote(name)}) TO {sql_literal(str(target))} "
                        f"(FORMAT parquet)")
    finally:
        con.close()
    return register_parquet(session, database, parquet_dir)


def register_parquet(session, database: str, folder: str | Path) -> list[str]:
    """Register each ``<table>.parquet`` (a file or a folder of parts) of ``folder`` as a table of ``database``
    (created if needed; the files stay where they are). Returns the table names."""
    check_identifier(database, "Spark database name")
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"parquet={folder}: not a folder of <table>.parquet files")
    files = {check_identifier(f.name[:-len(".parquet")], "table name").lower(): f
             for f in sorted(folder.glob("*.parquet"))}
    if not files:
        raise SourceError(f"parquet={folder}: no <table>.parquet file or folder in it")
    session.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    for name, f in files.items():
        session.sql(f"DROP TABLE IF EXISTS `{database}`.`{name}`")
        session.catalog.createTable(f"`{database}`.`{name}`", path=str(f.resolve()), source="parquet")
    return sorted(files)

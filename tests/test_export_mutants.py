"""Fast tests that kill mutants of omop_behrt/vectors/export.py which test_export.py let survive (bench/mutation.sh).

``unique_entries`` (one row per cohort, subject and index DATE; the latest of a day kept) is checked against a
pandas computation written here, on entries at midnight and a microsecond before it; the patient_embedding
rows hold float32 vectors whatever the caller passes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from omop_behrt.vectors.export import embedding_table, unique_entries


def _index(rng: np.random.Generator, n: int) -> pa.Table:
    day = rng.integers(14_000, 14_004, n).astype("int64") * 86_400_000_000
    offset = rng.choice([0, 1, 3_600_000_000, 86_399_999_999], n)          # midnight, 1 µs, 1 h, 1 µs before next
    ts = day + offset + rng.permutation(n)                                   # distinct times
    return pa.table({"cohort_definition_id": pa.array(rng.integers(1, 3, n), pa.int64()),
                     "subject_id": pa.array(rng.integers(1, 6, n), pa.int64()),
                     "index_date": pa.array(ts, pa.int64()).cast(pa.timestamp("us"))})


def test_unique_entries_keep_the_latest_of_each_day():
    rng = np.random.default_rng(0)
    for _ in range(5):
        ix = _index(rng, 200)
        df = ix.to_pandas()
        df["row"] = np.arange(len(df))
        df["day"] = df["index_date"].dt.floor("D")
        expected = np.sort(df.sort_values("index_date").groupby(["cohort_definition_id", "subject_id", "day"])
                           ["row"].last().to_numpy())
        assert len(expected) < len(df)                    # duplicates of a day are there to drop
        np.testing.assert_array_equal(unique_entries(ix), expected)


def test_unique_entries_separate_cohorts_and_subjects_on_one_day():
    """Same day: two subjects of one cohort, and one subject in two cohorts, are four entries, not fewer."""
    ts = pd.to_datetime(["2020-05-05 08:00", "2020-05-05 09:00", "2020-05-05 10:00", "2020-05-05 11:00"])
    ix = pa.table({"cohort_definition_id": pa.array([1, 1, 2, 2], pa.int64()),
                   "subject_id": pa.array([7, 8, 8, 8], pa.int64()), "index_date": pa.array(ts)})
    np.testing.assert_array_equal(unique_entries(ix), [0, 1, 3])     # cohort 2's subject 8 twice: the later kept
    ix = ix.slice(0, 3)
    np.testing.assert_array_equal(unique_entries(ix), [0, 1, 2])


def test_embedding_rows_are_float32_whatever_comes_in():
    ix = pa.table({"cohort_definition_id": pa.array([1, 1], pa.int32()), "subject_id": pa.array([5, 6], pa.int32()),
                   "index_date": pa.array(pd.to_datetime(["2020-01-01 10:00", "2020-01-02 00:00"]))})
    v = np.array([[0.1, 1e-8], [2.5, -3.0]], dtype=np.float64)
    t = embedding_table(ix, v, "m1")
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 2)
    assert t.schema.field("model_id").type == pa.string()
    np.testing.assert_array_equal(np.array(t["embedding"].to_pylist(), np.float32), v.astype(np.float32))
    assert [str(d) for d in t["index_date"].to_pylist()] == ["2020-01-01", "2020-01-02"]

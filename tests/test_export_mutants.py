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


def test_model_registry_row_names_the_model_and_its_config(tmp_path):
    import json
    from omop_behrt.vectors.export import EmbeddingModelInfo
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"hidden": 8, "layers": 1}))
    (tmp_path / "m" / "metadata.json").write_text(json.dumps({}))
    info = EmbeddingModelInfo.of_model_dir(tmp_path / "m", "ab" * 32, 8)
    assert (info.model_id, info.name, info.dims) == ("ab" * 8, "m", 8)          # no name in metadata: the folder's
    (tmp_path / "m" / "metadata.json").write_text(json.dumps({"name": "behrt-eunomia"}))
    row = EmbeddingModelInfo.of_model_dir(tmp_path / "m", "cd" * 32, 8).row()
    assert row.column_names == ["model_id", "name", "dims", "created_at", "config", "checksum"]
    assert row["name"].to_pylist() == ["behrt-eunomia"] and row["checksum"].to_pylist() == ["cd" * 32]
    assert json.loads(row["config"][0].as_py())["hidden"] == 8


def test_embedding_table_types_whatever_the_input():
    """float64 vectors are stored as float32; an empty index keeps the string and list types."""
    rng = np.random.default_rng(1)
    t = embedding_table(_index(rng, 3), rng.normal(size=(3, 4)), "m1")
    assert t.schema.field("embedding").type.value_type == pa.float32()
    assert t.schema.field("model_id").type == pa.string()
    empty = embedding_table(_index(rng, 0), np.zeros((0, 4)), "m1")
    assert empty.num_rows == 0 and empty.schema == t.schema


def test_write_checks_and_sizes(tmp_path):
    import pytest
    from omop_behrt.vectors.export import EmbeddingModelInfo, _first_line, estimated_bytes, write_embeddings
    assert estimated_bytes(10, 8) == 10 * (8 * 4 + 40) and estimated_bytes(10, 8, ohdsi=True) == 720 + 10 * 8 * 32
    rng = np.random.default_rng(2)
    info = EmbeddingModelInfo("m1", "m", 4, "x" * 64, {})
    one = _index(rng, 2).set_column(0, "cohort_definition_id", pa.array([1, 1], pa.int64()))
    for bad in (989, 1000):
        with pytest.raises(ValueError, match=f"OHDSI analysis id must be in 990..999, got {bad}"):
            write_embeddings(tmp_path / "e.parquet", one, rng.normal(size=(2, 4)), info, ohdsi_analysis_id=bad)

    class Wrapped(Exception):
        orig = ValueError("the driver's own message\nsecond line")
    assert _first_line(Wrapped("sqlalchemy's wrapper text")) == "the driver's own message"
    assert _first_line(RuntimeError("")) == "RuntimeError"


def test_parquet_target_needs_room_for_the_files_it_rewrites(tmp_path, monkeypatch):
    """A Parquet folder is rewritten beside its old files: the free space must cover the new rows and the old files
    (worked out here from the files' sizes), and the error says how much is needed and how much is free."""
    import collections
    import shutil as sh
    import pytest
    from omop_behrt.vectors import export
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "patient_embedding.parquet").write_bytes(b"x" * 3_000_000)
    (folder / "notes.txt").write_bytes(b"x" * 9_000_000)                       # not a Parquet file: not rewritten
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10**12, 0, 4_000_000))
    export.check_writable(folder, needed_bytes=900_000)                          # 0.9 + 3 MB <= 4 MB free
    with pytest.raises(export.TargetError) as e:
        export.check_writable(folder, needed_bytes=1_100_000)                    # 1.1 + 3 MB > 4 MB free
    assert str(e.value).endswith(f"about 4 MB needed, 4 MB free on {folder}")
    export.check_writable(folder, needed_bytes=0)                                # no estimate: no space check

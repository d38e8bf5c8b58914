"""Fast tests that kill mutants of omop_behrt/vectors/embed.py's censoring and batching helpers (bench/mutation.sh).

The cut each index row is embedded at (its index date, or the end of that day with ``inclusive``), the match of
index rows to tokenised sequences, the index table an sklearn X becomes (and every refusal word for word), and the
fixed-shape batch plan, all checked against values worked out by hand.
"""
from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from omop_behrt.tasks.cohorts import INDEX_SCHEMA
from omop_behrt.vectors.embed import _as_index, _index_from_array, _match_rows, cut_times, fixed_shape_plan

D = dt.datetime


def _us(*stamps: str) -> list[int]:
    return [int(np.datetime64(s, "us").astype(np.int64)) for s in stamps]


def test_cut_is_the_index_time_or_the_end_of_its_day():
    ix = pa.table({"index_date": pa.array([D(2020, 1, 2, 13), D(2020, 1, 3), D(1969, 12, 31, 23, 59)],
                                          pa.timestamp("ms"))})
    got = cut_times(ix)
    assert got.dtype == np.int64
    assert got.tolist() == _us("2020-01-02T13:00", "2020-01-03T00:00", "1969-12-31T23:59")
    assert cut_times(ix, inclusive=True).tolist() == _us("2020-01-03", "2020-01-04", "1970-01-01")
    dates = pa.table({"index_date": pa.array([dt.date(2021, 5, 6)])})
    assert cut_times(dates).tolist() == _us("2021-05-06") and cut_times(dates, True).tolist() == _us("2021-05-07")


def test_rows_find_their_sequence_by_subject_and_cut():
    seq_s, seq_t = np.array([3, 1, 1, 2]), np.array([5, 9, 4, 0])
    got = _match_rows(seq_s, seq_t, np.array([1, 2, 1, 3, 1]), np.array([9, 0, 4, 5, 9]))
    assert got.tolist() == [1, 3, 2, 0, 1]
    assert _match_rows(np.array([7]), np.array([3]), np.array([7, 7]), np.array([3, 3])).tolist() == [0, 0]
    for subject, time in ((1, 5), (9, 9), (0, 0)):      # no such key; past the last key; before the first
        with pytest.raises(RuntimeError, match="^internal error: an index row has no tokenised sequence$"):
            _match_rows(seq_s, seq_t, np.array([subject]), np.array([time]))
    empty = np.array([], dtype=np.int64)      # no sequences: its own error, not an IndexError
    with pytest.raises(RuntimeError, match="^internal error: an index row has no tokenised sequence$"):
        _match_rows(empty, empty, np.array([1]), np.array([0]))
    assert _match_rows(empty, empty, empty, empty).tolist() == []


def test_x_becomes_an_index_table_or_a_clear_refusal():
    frame = pd.DataFrame({"subject_id": [4, 2], "index_date": pd.to_datetime(["2020-01-01", "2021-02-03"])})
    t = _as_index(frame)
    assert t.schema == INDEX_SCHEMA and t.to_pylist() == [
        {"cohort_definition_id": 0, "subject_id": 4, "index_date": D(2020, 1, 1)},
        {"cohort_definition_id": 0, "subject_id": 2, "index_date": D(2021, 2, 3)}]
    assert _as_index(pa.Table.from_pandas(frame, preserve_index=False)).equals(t)
    arr = np.array([[4, np.datetime64("2020-01-01")], [2, np.datetime64("2021-02-03")]], dtype=object)
    assert _as_index(arr).equals(t) and _index_from_array(arr).equals(t)
    swapped = pd.DataFrame({"index_date": frame["index_date"], "subject_id": frame["subject_id"]})
    assert _as_index(swapped).equals(t)                                      # read by name, not position
    big = np.array([[2**53 + 1, np.datetime64("2020-01-01")]], dtype=object)   # beyond float64's integers
    assert _index_from_array(big)["subject_id"].to_pylist() == [2**53 + 1]
    with pytest.raises(TypeError) as e:
        _as_index(SimpleNamespace(toarray=lambda: None))
    assert str(e.value) == "sparse input is not (subject_id, index_date) rows; pass a DataFrame"
    with pytest.raises(ValueError) as e:
        _as_index(np.array([1, 2]))
    assert str(e.value) == "Expected 2D (subject_id, index_date) rows, got a 1D array. Reshape your data."
    with pytest.raises(ValueError) as e:
        _as_index(frame.iloc[:0])
    assert str(e.value) == "X has 0 rows: nothing to embed (expected subject_id, index_date rows)"
    for bad in (np.zeros((2, 3)), np.zeros((2, 1)), np.zeros((1, 2, 2))):
        with pytest.raises(ValueError) as e:
            _as_index(bad)
        assert str(e.value) == ("X must be a table with columns subject_id and index_date (a DataFrame, an Arrow "
                                "table, or an (n, 2) array of subject ids and dates); got shape " f"{bad.shape}")


def test_fixed_shape_plan_by_hand():
    """lengths 3, 20, 5, 17, 40 (step 16, max_len 32, 64 tokens): T 16, 32, 16, 32, 40 (the longest, uncapped)."""
    plan = fixed_shape_plan(np.array([3, 20, 5, 17, 40]), 64, 32, step=16)
    assert [(idx.tolist(), T, n) for idx, T, n in plan] == [([0, 2, 2, 2], 16, 2), ([3, 1], 32, 2), ([4], 40, 1)]
    plan = fixed_shape_plan(np.array([0, 16, 17, 33]), 10, 48, step=16, rows_cap=3)   # budget max(10, 48) = 48
    assert [(idx.tolist(), T, n) for idx, T, n in plan] == [([0, 1, 1], 16, 2), ([2], 32, 1), ([3], 48, 1)]
    plan = fixed_shape_plan(np.array([5, 6, 7]), 4096, 16)                    # default step 16, at most 16 rows
    assert [(idx.tolist(), T, n) for idx, T, n in plan] == [([0, 1, 2] + [2] * 13, 16, 3)]
    plan = fixed_shape_plan(np.array([9, 2, 30, 31, 29]), 64, 32, step=8, rows_cap=2)
    assert [(idx.tolist(), T, n) for idx, T, n in plan] == [([1, 1], 8, 1), ([0, 0], 16, 1), ([4, 2], 32, 2),
                                                            ([3, 3], 32, 1)]


def test_fixed_shape_plan_edges():
    """Step 1 keeps lengths 0 and 1 at T 1; no lengths, no batches; equal lengths keep their order (stable)."""
    plan = fixed_shape_plan(np.array([1, 0, 3]), 64, 8, step=1)
    assert [(idx.tolist(), T, n) for idx, T, n in plan] == [([1, 0] + [0] * 14, 1, 2), ([2] * 16, 3, 1)]
    assert fixed_shape_plan(np.array([], np.int64), 64, 8) == []
    lengths = np.array([5, 3] * 20)                                          # 40 rows of T 16, in 3 batches
    plan = fixed_shape_plan(lengths, 4096, 16)
    order = list(range(1, 40, 2)) + list(range(0, 40, 2))                    # the 3s, then the 5s, each in order
    assert [idx[:n].tolist() for idx, _, n in plan] == [order[:16], order[16:32], order[32:]]


def test_embedding_maps_codes_with_the_models_own_vocabulary_and_the_cdm(tiny_model, eunomia_db, tmp_path):
    """The codes are mapped with the vocabulary the model was pretrained with (its metadata), the CDM lending its
    vocabulary tables: the same weights under ``ancestor(level=1)`` (a roll-up through the CDM's concept_ancestor)
    read other tokens than under ``source``, so the vectors differ, and the run says which vocabulary it used."""
    import shutil
    from omop_behrt.tasks import cohorts
    from omop_behrt.vectors.embed import embed_cohort
    cdm = tmp_path / "e.duckdb"
    shutil.copy(eunomia_db, cdm)
    cohorts.first_occurrence_cohort(cdm, 1, [192671], results_schema="results")
    ix = cohorts.CohortTable(cdm, "results").read(1).slice(0, 40)
    from omop_behrt.behrt.model import Behrt
    model = Behrt.load(tiny_model)
    assert model.metadata["vocab"] == "source"
    other = model.save(tmp_path / "rolled_up", vocab=model.vocab,
                       metadata={**model.metadata, "vocab": "ancestor(level=1)"})
    a = embed_cohort(tiny_model, cdm, ix, progress=False, device="cpu")
    b = embed_cohort(other, cdm, ix, progress=False, device="cpu")
    assert (a.provenance["vocab"], b.provenance["vocab"]) == ("source", "ancestor(level=1)")
    assert a.vectors.shape == b.vectors.shape == (40, 64) and not np.allclose(a.vectors, b.vectors)

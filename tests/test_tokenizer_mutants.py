"""Fast tests that kill mutants of omop_behrt/behrt/tokenizer.py which test_tokenizer.py let survive.

The defaults a caller relies on (max_len 256, plos_days 7, min_count 10, no time tokens) are pinned by inputs
built just past them; ``dedupe=False`` keeps a code repeated inside a visit; the arrays have the documented dtypes
and ``meta`` the documented keys; the errors say exactly what was wrong. Expected values are worked out by hand
or with plain Python here, never with the tokenizer.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from omop_behrt.behrt.tokenizer import CLS, SEP, SPECIALS, UNK, TokenVocabulary, tokenize


def _tokens(rows: list[tuple[int, dt.datetime, int, str]]) -> pa.Table:
    """(subject, time, visit, token) rows -> the token table tokenize reads."""
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "visit_id": pa.array([r[2] for r in rows], pa.int64()),
                     "token": pa.array([r[3] for r in rows], pa.string())})


def _persons(ids: list[int]) -> pa.Table:
    return pa.table({"subject_id": pa.array(ids, pa.int64()),
                     "birth_date": pa.array([dt.date(1970, 1, 1)] * len(ids), pa.date32()),
                     "sex": pa.array(["F"] * len(ids), pa.string())})


def test_default_max_len_keeps_256_tokens_of_the_latest_visits():
    """200 one-code visits (2 tokens each after [CLS]): 256 tokens hold [CLS] and the last 127 visits."""
    start = dt.datetime(2000, 1, 1)
    rows = [(1, start + dt.timedelta(days=i), i, f"C{i:03d}") for i in range(200)]
    t = _tokens(rows)
    v = TokenVocabulary.build(t, min_count=1)
    s = tokenize(t, _persons([1]), v)
    kept = range(200 - 127, 200)
    want = [CLS] + [x for i in kept for x in (v.tokens.index(f"C{i:03d}"), SEP)]
    assert len(want) == 255
    np.testing.assert_array_equal(s[0]["input_ids"], want)
    np.testing.assert_array_equal(s[0]["positions"], [0] + [k for k in range(127) for _ in (0, 1)])
    assert s.meta["max_len"] == 256


def test_dedupe_false_keeps_a_code_repeated_in_a_visit():
    d1, d2 = dt.datetime(2001, 3, 1), dt.datetime(2001, 3, 2)
    t = _tokens([(1, d1, 7, "A"), (1, d2, 7, "A"), (1, d1, 7, "B"), (1, d2, 8, "B"), (1, d2, 8, "B")])
    v = TokenVocabulary.build(t, min_count=1)
    A, B = v.tokens.index("A"), v.tokens.index("B")
    kept = tokenize(t, _persons([1]), v, dedupe=False)      # the same row twice is kept twice too
    np.testing.assert_array_equal(kept[0]["input_ids"], [CLS, A, A, B, SEP, B, B, SEP])
    np.testing.assert_array_equal(kept[0]["positions"], [0, 0, 0, 0, 0, 1, 1, 1])
    assert kept.meta["dedupe"] is False
    once = tokenize(t, _persons([1]), v)
    np.testing.assert_array_equal(once[0]["input_ids"], [CLS, A, B, SEP, B, SEP])


def test_arrays_have_the_documented_dtypes_and_meta_its_keys():
    t = _tokens([(1, dt.datetime(2000, 1, 1), 1, "A"), (2, dt.datetime(2001, 1, 1), 2, "A")])
    v = TokenVocabulary.build(t, min_count=1)
    cutoff = pa.table({"subject_id": pa.array([1], pa.int64()), "index_time": pa.array([dt.datetime(2000, 6, 1)])})
    s = tokenize(t, _persons([1, 2]), v, cutoff=cutoff)
    dtypes = {"offsets": np.int64, "input_ids": np.int32, "ages": np.int16, "segments": np.int8,
              "positions": np.int16, "subject_id": np.int64, "index_time": np.int64, "sex": np.int8,
              "plos": np.int8}
    assert {k: getattr(s, k).dtype for k in dtypes} == {k: np.dtype(d) for k, d in dtypes.items()}
    sha = hashlib.sha256("\n".join(list(SPECIALS) + ["A"]).encode()).hexdigest()
    assert s.meta == {"max_len": 256, "age_unit": "year", "vocab_sha256": sha, "vocab_size": 6, "dedupe": True,
                      "plos_days": 7.0, "cutoff": True, "inclusive": False}
    plain = tokenize(t, _persons([1, 2]), v, max_len=9, age_unit="month", inclusive=True)
    assert plain.meta == {"max_len": 9, "age_unit": "month", "vocab_sha256": sha, "vocab_size": 6,
                          "dedupe": True, "plos_days": 7.0, "cutoff": False, "inclusive": True}


def test_plos_is_strictly_longer_than_plos_days_seven_by_default():
    """Visits of 7 days + 3 s and 7.5 days count as prolonged; exactly 7 days does not."""
    start = dt.datetime(2010, 1, 1)
    lengths = {1: dt.timedelta(days=7), 2: dt.timedelta(days=7, seconds=3), 3: dt.timedelta(days=7, hours=12)}
    t = _tokens([(p, start, 100 + p, "A") for p in lengths])
    visits = pa.table({"subject_id": pa.array(list(lengths), pa.int64()),
                       "visit_id": pa.array([100 + p for p in lengths], pa.int64()),
                       "time": pa.array([start] * 3, pa.timestamp("us")),
                       "end_time": pa.array([start + d for d in lengths.values()], pa.timestamp("us"))})
    v = TokenVocabulary.build(t, min_count=1)
    assert list(tokenize(t, _persons(list(lengths)), v, visits=visits).plos) == [0, 1, 1]
    assert list(tokenize(t, _persons(list(lengths)), v, visits=visits, plos_days=7.0).plos) == [0, 1, 1]
    assert list(tokenize(t, _persons(list(lengths)), v, visits=visits, plos_days=7.25).plos) == [0, 0, 1]


def test_errors_say_exactly_what_was_wrong():
    t = _tokens([(1, dt.datetime(2000, 1, 1), 1, "A")])
    v = TokenVocabulary.build(t, min_count=1)
    with pytest.raises(ValueError) as e:
        tokenize(t, _persons([1]), v, max_len=2)
    assert str(e.value) == "max_len must be >= 3 ([CLS] code [SEP]), got 2"
    with pytest.raises(ValueError) as e:
        tokenize(t, _persons([1]), v, age_unit="day")
    assert str(e.value) == "age_unit must be 'year' or 'month', got 'day'"
    with pytest.raises(ValueError) as e:
        tokenize(t, _persons([1]), v, time_tokens=True)
    assert str(e.value) == ("time_tokens=True needs a vocabulary holding them after the specials: build it with "
                            "TokenVocabulary.build(..., time_tokens=True)")
    with pytest.raises(ValueError) as e:
        TokenVocabulary.count(duckdb.connect(), "no view")
    assert str(e.value) == "view must be a plain identifier, got 'no view'"


def test_count_defaults_to_ten_persons_and_no_time_tokens():
    """A token seen in exactly 10 persons is kept, one seen in 9 is not, and no time tokens are added."""
    rows = [(p, "A") for p in range(10)] + [(p, "B") for p in range(9)] + [(0, "A"), (0, "B")]
    view = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()), "token": [r[1] for r in rows]})
    con = duckdb.connect()
    con.register("pairs", view)
    v = TokenVocabulary.count(con, "pairs")
    assert v.tokens == list(SPECIALS) + ["A"] and v.counts == [0] * 5 + [10]
    assert (v.min_count, v.persons) == (10, 10)


def test_encode_a_list_of_only_nulls_or_nothing():
    v = TokenVocabulary(list(SPECIALS) + ["A"], [0] * 5 + [3], min_count=1)
    np.testing.assert_array_equal(v.encode([None, None]), [UNK, UNK])
    np.testing.assert_array_equal(v.encode(["A", None, "Z"]), [5, UNK, UNK])
    empty = v.encode([])
    assert empty.dtype == np.int32 and empty.shape == (0,)


def _sequences(lengths: list[int]):
    """Sequences of the given lengths whose token values encode (sequence, position): checkable by hand."""
    from omop_behrt.behrt.tokenizer import Sequences
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    seq = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(offsets[-1]) - offsets[seq]
    n = len(lengths)
    return Sequences(offsets, (100 * seq + pos).astype(np.int32), (seq + 20).astype(np.int16),
                     (pos % 2).astype(np.int8), pos.astype(np.int16), np.arange(n, dtype=np.int64) + 1000,
                     np.arange(n, dtype=np.int64) * 7, (np.arange(n) % 3).astype(np.int8),
                     (np.arange(n) % 2).astype(np.int8), {"max_len": 9})


def test_select_takes_whole_sequences_in_the_order_asked():
    s = _sequences([3, 1, 4, 2])
    got = s.select([2, 0, 3])
    assert got.offsets.tolist() == [0, 4, 7, 9]
    assert got.input_ids.tolist() == [200, 201, 202, 203, 0, 1, 2, 300, 301]
    assert got.ages.tolist() == [22] * 4 + [20] * 3 + [23] * 2
    assert got.segments.tolist() == [0, 1, 0, 1, 0, 1, 0, 0, 1]
    assert got.positions.tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1]
    assert got.subject_id.tolist() == [1002, 1000, 1003] and got.index_time.tolist() == [14, 0, 21]
    assert got.sex.tolist() == [2, 0, 0] and got.plos.tolist() == [0, 0, 1] and got.meta == {"max_len": 9}
    assert len(s.select([])) == 0 and s.select([1]).input_ids.tolist() == [100]


def test_save_in_parts_and_load_give_the_same_sequences(tmp_path):
    s = _sequences([3, 1, 4, 2, 5])
    s.save(tmp_path / "t", shard_sequences=2)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "part-00000.npz", "part-00001.npz", "part-00002.npz", "sequences.json"]
    assert (tmp_path / "t" / "sequences.json").read_text() == \
        '{\n "max_len": 9,\n "sequences": 5,\n "tokens": 15,\n "parts": 3\n}'
    back = type(s).load(tmp_path / "t")
    for a in s.ARRAYS:
        assert getattr(back, a).tolist() == getattr(s, a).tolist(), a
    assert back.offsets.tolist() == [0, 3, 4, 8, 10, 15]
    assert back.meta == {"max_len": 9, "sequences": 5, "tokens": 15, "parts": 3}
    s.select([0]).save(tmp_path / "t")                   # a smaller save replaces every old part
    assert len(type(s).load(tmp_path / "t")) == 1
    with pytest.raises(FileNotFoundError, match="no part-\\*.npz tokenised shards"):
        type(s).load(tmp_path)


def test_vocabulary_file_is_indented_and_rare_tokens_are_refused(tmp_path):
    v = TokenVocabulary(list(SPECIALS) + ["A/1"], [0] * len(SPECIALS) + [12], min_count=10, persons=30)
    path = v.save(tmp_path)
    text = path.read_text()
    assert text.startswith('{\n "min_count": 10,\n "persons": 30,\n') and path.name == "tokens.json"
    d = json.loads(text)
    d["tokens"]["A/1"]["persons"] = 9
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError) as e:
        TokenVocabulary.load(tmp_path)
    assert str(e.value) == (f"{path}: 1 tokens have a person count below min_count 10; a token vocabulary holds "
                            "only tokens seen in at least min_count persons")

"""Tokenizer: token vocabulary (min-count of distinct persons) and the visit stream -> flat arrays, exactly."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from omop_behrt.behrt.tokenizer import CLS, SEP, TIME_TOKENS, UNK, Sequences, TokenVocabulary, tokenize, visit_table


def events_as_tokens(events) -> pa.Table:
    """Token table straight from an event directory (token = code), independent of the vocabulary engine."""
    t = events.read_events(["subject_id", "time", "visit_id", "domain", "code"])
    return t.append_column("token", t.column("code"))


def ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


@pytest.fixture()
def hand():
    """Person 1 (F, born 1990-06-15): three visits; person 2 (M, born 1980-01-01): one visit."""
    rows = [  # subject, time, visit, token
        (1, "2000-01-10", 10, "A"), (1, "2000-01-10", 10, "B"), (1, "2000-01-11", 10, "A"),  # duplicate A
        (1, "2005-07-01", 11, "C"), (1, "2005-07-01", 11, "A"),
        (1, "2010-06-15", 12, "B"),
        (2, "2020-03-01", 20, "A"),
    ]
    tokens = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                       "time": pa.array([ts(r[1]) for r in rows], pa.timestamp("us")),
                       "visit_id": pa.array([r[2] for r in rows], pa.int64()),
                       "domain": ["condition"] * len(rows), "code": [r[3] for r in rows],
                       "token": [r[3] for r in rows]})
    persons = pa.table({"subject_id": pa.array([1, 2], pa.int64()),
                        "birth_date": pa.array([dt.date(1990, 6, 15), dt.date(1980, 1, 1)], pa.date32()),
                        "sex": ["F", "M"]})
    visits = pa.table({"subject_id": pa.array([1, 1, 1, 2], pa.int64()),
                       "visit_id": pa.array([10, 11, 12, 20], pa.int64()),
                       "time": pa.array([ts("2000-01-10"), ts("2005-07-01"), ts("2010-06-15"), ts("2020-03-01")]),
                       "end_time": pa.array([ts("2000-01-11"), ts("2005-07-10"), ts("2010-06-15"),
                                             ts("2020-03-03")])})
    return tokens, persons, visits


def test_vocabulary_counts_distinct_persons(hand):
    tokens, _, _ = hand
    v = TokenVocabulary.build(tokens, min_count=1)
    assert v.tokens == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "A", "B", "C"]  # count desc, then token
    assert v.counts[5:] == [2, 1, 1]            # A: 2 persons (not 4 rows)
    assert len(v) == 8 and v.persons == 2
    v2 = TokenVocabulary.build(tokens, min_count=2)
    assert v2.tokens[5:] == ["A"]
    np.testing.assert_array_equal(v2.encode(pa.array(["A", "B", None, "Z"])), [5, UNK, UNK, UNK])
    assert v2.encode(tokens.column("token")).dtype == np.int32


def test_vocabulary_save_load(hand, tmp_path):
    v = TokenVocabulary.build(hand[0], min_count=1)
    v.save(tmp_path)
    w = TokenVocabulary.load(tmp_path / "tokens.json")
    assert (w.tokens, w.counts, w.min_count, w.sha256) == (v.tokens, v.counts, 1, v.sha256)


def test_tokenize_exact(hand):
    tokens, persons, visits = hand
    v = TokenVocabulary.build(tokens, min_count=1)
    s = tokenize(tokens, persons, v, visits=visits)
    A, B, C = 5, 6, 7
    assert len(s) == 2 and list(s.subject_id) == [1, 2]
    p1 = s[0]
    np.testing.assert_array_equal(p1["input_ids"], [CLS, A, B, SEP, A, C, SEP, B, SEP])
    np.testing.assert_array_equal(p1["ages"], [9, 9, 9, 9, 15, 15, 15, 20, 20])
    np.testing.assert_array_equal(p1["segments"], [0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(p1["positions"], [0, 0, 0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(s[1]["input_ids"], [CLS, A, SEP])
    np.testing.assert_array_equal(s[1]["ages"], [40, 40, 40])
    assert list(s.sex) == [1, 2] and list(s.plos) == [1, 0]   # visit 11 lasted 9 days > 7
    np.testing.assert_array_equal(s.offsets, [0, 9, 12])
    months = tokenize(tokens, persons, v, age_unit="month")
    assert months[0]["ages"][0] == 114                          # 3496 days / 30.4375


def test_truncation_keeps_most_recent_visits(hand):
    tokens, persons, visits = hand
    v = TokenVocabulary.build(tokens, min_count=1)
    s = tokenize(tokens, persons, v, max_len=6, visits=visits)
    np.testing.assert_array_equal(s[0]["input_ids"], [CLS, 5, 7, SEP, 6, SEP])
    np.testing.assert_array_equal(s[0]["ages"], [15, 15, 15, 15, 20, 20])
    np.testing.assert_array_equal(s[0]["segments"], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(s[0]["positions"], [0, 0, 0, 0, 1, 1])
    s = tokenize(tokens, persons, v, max_len=3)
    np.testing.assert_array_equal(s[0]["input_ids"], [CLS, 6, SEP])
    first = pa.table({"subject_id": pa.array([1], pa.int64()), "index_time": pa.array([ts("2001-01-01")])})
    s = tokenize(tokens, persons, v, max_len=3, cutoff=first)     # one visit longer than the room: cut inside
    np.testing.assert_array_equal(s[0]["input_ids"], [CLS, 5, SEP])


def test_cutoff_sees_only_earlier_events(hand):
    tokens, persons, visits = hand
    v = TokenVocabulary.build(tokens, min_count=1)
    cutoff = pa.table({"subject_id": pa.array([1, 2], pa.int64()),
                       "index_time": pa.array([ts("2005-07-01"), ts("1999-01-01")], pa.timestamp("us"))})
    s = tokenize(tokens, persons, v, cutoff=cutoff, visits=visits)
    np.testing.assert_array_equal(s[0]["input_ids"], [CLS, 5, 6, SEP])       # strictly before
    np.testing.assert_array_equal(s[1]["input_ids"], [CLS])                  # nothing before: [CLS] only
    assert s[1]["ages"][0] == 19 and list(s.plos) == [0, 0]
    expected = np.array(["2005-07-01", "1999-01-01"], dtype="datetime64[us]").astype(np.int64)
    np.testing.assert_array_equal(s.index_time, expected)
    s = tokenize(tokens, persons, v, cutoff=cutoff, inclusive=True)
    np.testing.assert_array_equal(s[0]["input_ids"], [CLS, 5, 6, SEP, 5, 7, SEP])


def test_eunomia_deterministic_and_shards(eunomia_events, tmp_path):
    tokens = events_as_tokens(eunomia_events)
    v = TokenVocabulary.build(tokens)
    a = tokenize(tokens, eunomia_events.persons(), v, visits=visit_table(eunomia_events))
    b = tokenize(tokens.take(np.random.default_rng(0).permutation(tokens.num_rows)), eunomia_events.persons(), v)
    assert len(a) == 2694 and a.lengths.max() <= 256 and a.lengths.min() >= 3
    for name in ("offsets", "input_ids", "ages", "segments", "positions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))   # row order of the input is irrelevant
    starts = a.offsets[:-1]
    assert (a.input_ids[starts] == CLS).all() and (a.input_ids[a.offsets[1:] - 1] == SEP).all()
    assert (a.positions[starts] == 0).all() and (a.segments[starts] == 0).all()
    a.save(tmp_path / "seq", shard_sequences=1000)
    assert len(list((tmp_path / "seq").glob("part-*.npz"))) == 3
    c = Sequences.load(tmp_path / "seq")
    for name in Sequences.ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(c, name))
    sub = a.select(np.array([7, 3]))
    np.testing.assert_array_equal(sub[0]["input_ids"], a[7]["input_ids"])


def test_cutoff_no_later_event_leaks_eunomia(eunomia_events):
    import duckdb
    tokens = events_as_tokens(eunomia_events)
    v = TokenVocabulary.build(tokens)
    cutoff = duckdb.sql("SELECT subject_id, quantile_disc(time, 0.5) AS index_time FROM tokens "
                        "GROUP BY subject_id").to_arrow_table()
    earlier = duckdb.sql("SELECT t.* FROM tokens t JOIN cutoff c USING (subject_id) "
                         "WHERE t.time < c.index_time").to_arrow_table()
    a = tokenize(tokens, eunomia_events.persons(), v, cutoff=cutoff)
    b = tokenize(earlier, eunomia_events.persons(), v)
    has = np.isin(a.subject_id, b.subject_id)
    assert (a.lengths[~has] == 1).all()                       # nobody with no earlier event gets more than [CLS]
    a = a.select(np.flatnonzero(has))
    for name in ("offsets", "input_ids", "ages", "segments", "positions", "subject_id"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# -- CEHR-BERT time-gap tokens ------------------------------------------------------------------------
def test_time_tokens_exact(hand):
    tokens, persons, visits = hand
    v = TokenVocabulary.build(tokens, min_count=1, time_tokens=True)
    assert v.tokens[:5 + len(TIME_TOKENS)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TIME_TOKENS]
    assert v.has_time_tokens and v.counts[5:21] == [0] * 16 and v.tokens[21:] == ["A", "B", "C"]
    s = tokenize(tokens, persons, v, visits=visits)
    assert s.meta["time_tokens"] is True
    assert v.decode(s[0]["input_ids"]) == ["[CLS]", "A", "B", "[SEP]", "[LT]", "A", "C", "[SEP]",
                                           "[LT]", "B", "[SEP]"]
    np.testing.assert_array_equal(s[0]["ages"], [9, 9, 9, 9, 15, 15, 15, 15, 20, 20, 20])  # the next visit's
    np.testing.assert_array_equal(s[0]["segments"], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(s[0]["positions"], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    assert v.decode(s[1]["input_ids"]) == ["[CLS]", "A", "[SEP]"]      # one visit: no gap
    plain = tokenize(tokens, persons, v, visits=visits, time_tokens=False)
    assert v.decode(plain[0]["input_ids"]) == ["[CLS]", "A", "B", "[SEP]", "A", "C", "[SEP]", "B", "[SEP]"]
    assert "time_tokens" not in plain.meta


def test_time_token_bins_are_cehr_berts():
    gaps = [0, 6, 7, 27, 28, 29, 30, 59, 60, 359, 360, 5000]      # days after the previous visit
    want = ["[W0]", "[W0]", "[W1]", "[W3]", "[M1]", "[M1]", "[M1]", "[M1]", "[M2]", "[M11]", "[LT]", "[LT]"]
    days = np.cumsum([0] + gaps)
    start = np.datetime64("2000-01-01", "us")
    tokens = pa.table({"subject_id": pa.array(np.ones(len(days)), pa.int64()),
                       "time": pa.array(start + days.astype("timedelta64[D]"), pa.timestamp("us")),
                       "visit_id": pa.array(np.arange(len(days)), pa.int64()), "token": ["X"] * len(days)})
    persons = pa.table({"subject_id": pa.array([1], pa.int64()),
                        "birth_date": pa.array([dt.date(1950, 1, 1)], pa.date32()), "sex": ["F"]})
    v = TokenVocabulary.build(tokens, min_count=1, time_tokens=True)
    got = v.decode(tokenize(tokens, persons, v)[0]["input_ids"])
    assert got[3::3] == want and got[:4] == ["[CLS]", "X", "[SEP]", "[W0]"]
    assert len(got) == 1 + 2 * len(days) + len(gaps)


def test_time_tokens_truncation_and_cutoff(hand):
    tokens, persons, visits = hand
    v = TokenVocabulary.build(tokens, min_count=1, time_tokens=True)
    A, B, C = 21, 22, 23
    for max_len, want in [(10, [CLS, A, C, SEP, v.encode(["[LT]"])[0], B, SEP]), (7, [CLS, A, C, SEP, 20, B, SEP]),
                          (6, [CLS, B, SEP]), (3, [CLS, B, SEP])]:
        s = tokenize(tokens, persons, v, max_len=max_len)
        np.testing.assert_array_equal(s[0]["input_ids"], want)   # the first kept visit never has a gap token
        assert s.lengths.max() <= max_len
    cutoff = pa.table({"subject_id": pa.array([1], pa.int64()), "index_time": pa.array([ts("2005-07-01")])})
    np.testing.assert_array_equal(tokenize(tokens, persons, v, cutoff=cutoff)[0]["input_ids"], [CLS, A, B, SEP])


def test_time_tokens_vocabulary_round_trip_and_errors(hand, tmp_path):
    tokens, persons, _ = hand
    v = TokenVocabulary.build(tokens, min_count=1, time_tokens=True)
    w = TokenVocabulary.load(v.save(tmp_path))                 # count 0 below min_count: allowed for them only
    assert w.tokens == v.tokens and w.has_time_tokens and w.sha256 == v.sha256
    plain = TokenVocabulary.build(tokens, min_count=1)
    assert not plain.has_time_tokens
    with pytest.raises(ValueError, match="time_tokens=True needs a vocabulary"):
        tokenize(tokens, persons, plain, time_tokens=True)
    np.testing.assert_array_equal(tokenize(tokens, persons, plain).input_ids,            # default: as before
                                  tokenize(tokens, persons, plain, time_tokens=False).input_ids)


def test_time_tokens_eunomia_are_the_plain_stream_plus_gaps(eunomia_events):
    tokens = events_as_tokens(eunomia_events)
    plain_v, tv = TokenVocabulary.build(tokens), TokenVocabulary.build(tokens, time_tokens=True)
    assert tv.tokens[21:] == plain_v.tokens[5:]
    persons = eunomia_events.persons()
    plain = tokenize(tokens, persons, plain_v, max_len=4096)
    timed = tokenize(tokens, persons, tv, max_len=4096)
    is_gap = (timed.input_ids >= 5) & (timed.input_ids < 21)
    np.testing.assert_array_equal(np.where(timed.input_ids[~is_gap] >= 21, timed.input_ids[~is_gap] - 16,
                                           timed.input_ids[~is_gap]), plain.input_ids)
    per_seq = np.add.reduceat(is_gap.astype(np.int64), timed.offsets[:-1])
    visits = np.add.reduceat((plain.input_ids == SEP).astype(np.int64), plain.offsets[:-1])
    np.testing.assert_array_equal(per_seq, visits - 1)         # one gap token between two visits
    for name in ("ages", "segments", "positions"):             # a gap token carries its visit's attributes
        np.testing.assert_array_equal(getattr(timed, name)[~is_gap], getattr(plain, name))
        np.testing.assert_array_equal(getattr(timed, name)[is_gap], getattr(timed, name)[np.flatnonzero(is_gap) + 1])
    assert (timed.lengths == plain.lengths + per_seq).all()

"""Fast tests that kill mutants of adapters/omop.py's quarantine and censoring helpers (bench/mutation.sh).

The quarantine rows of a batch (source, row key, subject, time, code, reason; nulls where the query has no such
column), the value counts behind the summary, the no-person error naming the filter, the resume check naming what
differs, and the digest of the index dates an extraction was censored at, recomputed here with hashlib.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from omop_behrt.adapters import omop, omop_visits
from omop_behrt.events import QUARANTINE_SCHEMA, EventDir

D = dt.datetime


def test_index_dates_digest_is_sha256_of_each_subjects_latest_day():
    ix = pa.table({"subject_id": pa.array([5, 2, 5, 9, 2], pa.int32()),
                   "index_date": pa.array([D(2020, 1, 1), D(2019, 6, 30, 23), D(2021, 3, 4, 12), None,
                                           D(2018, 1, 1)], pa.timestamp("ms"))})
    latest = {2: dt.date(2019, 6, 30).toordinal(), 5: dt.date(2021, 3, 4).toordinal(), 9: 0}
    h = hashlib.sha256(np.array(sorted(latest), np.int64).tobytes()
                       + np.array([latest[k] for k in sorted(latest)], np.int64).tobytes())
    assert omop.index_dates_digest(ix) == f"3 subjects, sha256 {h.hexdigest()[:16]}"
    dates = pa.table({"subject_id": pa.array([7], pa.int64()), "index_date": pa.array([dt.date(2001, 2, 3)])})
    h = hashlib.sha256(np.array([7], np.int64).tobytes() + np.array([dt.date(2001, 2, 3).toordinal()],
                                                                    np.int64).tobytes())
    assert omop.index_dates_digest(dates) == f"1 subjects, sha256 {h.hexdigest()[:16]}"


def test_quarantine_rows_take_the_masked_rows_with_nulls_for_missing_columns():
    batch = pa.table({"subject_id": pa.array([1, 2, 3], pa.int64()), "row_key": ["10", "20", "30"],
                      "time": pa.array([D(2000, 1, 1), None, D(2002, 1, 1)], pa.timestamp("us")),
                      "code": ["A/1", "B/2", "C/3"], "reason": [None, "null x", "bad y"]})
    mask = pa.array([False, True, True])
    q = omop._quarantine_rows(batch, mask, "drug_exposure")
    assert q.schema == QUARANTINE_SCHEMA
    assert q.to_pylist() == [
        {"source": "drug_exposure", "row": "20", "subject_id": 2, "time": None, "code": "B/2", "reason": "null x"},
        {"source": "drug_exposure", "row": "30", "subject_id": 3, "time": D(2002, 1, 1), "code": "C/3",
         "reason": "bad y"}]
    q = omop._quarantine_rows(batch, mask, "drug_exposure", with_code=False)
    assert q["code"].to_pylist() == [None, None] and q["row"].to_pylist() == ["20", "30"]
    bare = batch.select(["subject_id", "reason"])
    q = omop._quarantine_rows(bare, mask, "person")
    assert q.schema == QUARANTINE_SCHEMA
    assert q.to_pylist() == [{"source": "person", "row": None, "subject_id": s, "time": None, "code": None,
                              "reason": r} for s, r in ((2, "null x"), (3, "bad y"))]
    assert omop._quarantine_rows(batch, pa.array([False] * 3), "x").num_rows == 0
    narrow = batch.cast(pa.schema([f.with_type(pa.int32()) if f.name == "subject_id" else
                                   f.with_type(pa.timestamp("ms")) if f.name == "time" else f for f in batch.schema]))
    q = omop._quarantine_rows(narrow, mask, "drug_exposure")              # cast to the quarantine's schema
    assert q.schema == QUARANTINE_SCHEMA and q["subject_id"].to_pylist() == [2, 3]


def test_count_values_adds_the_non_null_values():
    into = {"a": 1}
    omop._count_values(pa.array(["a", None, "b", "a"]), into)
    assert into == {"a": 3, "b": 1}
    omop._count_values(pa.array([None, None], pa.string()), into)
    assert into == {"a": 3, "b": 1}
    omop._count_values(pa.chunked_array([["b"], ["c", None]]), into)
    assert into == {"a": 3, "b": 2, "c": 1}


def test_no_person_error_names_the_filter():
    cdm = SimpleNamespace(db=SimpleNamespace(description="cdm.duckdb"), results_schema="res")
    tail = ", so nothing would be extracted; check the filter, or pass --allow-empty to write an empty event directory"
    cases = [(omop.ExtractOptions(person_ids=[3, 1, 3]), "none of the 2 --person-ids is in the person table"),
             (omop.ExtractOptions(cohort_id=4, cohort_table="mine"),
              "cohort 4 of res.mine has no subject in the person table"),
             (omop.ExtractOptions(index_dates=pa.table({"subject_id": pa.array([1], pa.int64()),
                                                        "index_date": pa.array([D(2020, 1, 1)])})),
              "no subject of the index dates is in the person table"),
             (omop.ExtractOptions(), "the person table is empty")]
    for options, what in cases:
        e = omop._no_person_error(cdm, options)
        assert isinstance(e, omop.SourceError) and str(e) == f"cdm.duckdb: {what}{tail}"


def test_resume_check_says_what_differs(tmp_path):
    out = EventDir(tmp_path)
    with pytest.raises(ValueError) as e:
        omop._check_resume(out, {}, {"a": 1})
    assert str(e.value) == (f"--resume: {tmp_path} records no fingerprint of its inputs (an older or foreign "
                            "extraction), so it cannot be checked to be the same run; run without --resume to start "
                            "over")
    omop._check_resume(out, {"fingerprint": {"a": 1, "b": None}}, {"a": 1, "b": None})      # the same: no error
    with pytest.raises(ValueError) as e:
        omop._check_resume(out, {"fingerprint": {"a": 1, "b": "x", "c": None}}, {"a": 2, "b": None, "c": None,
                                                                                 "d": "new"})
    assert str(e.value) == (f"--resume: {tmp_path} was extracted with other inputs: a was 1, now 2; b was 'x', now "
                            "none; d was None, now 'new'; run without --resume to start over (only --domains may "
                            "differ: a resume adds the domains not yet extracted)")


def test_interrupted_is_the_databases_ctrl_c_error_only():
    import duckdb
    assert omop._interrupted(duckdb.InterruptException("x"))
    assert omop._interrupted(RuntimeError("Query interrupted"))
    assert omop._interrupted(RuntimeError(" Query interrupted\n"))
    assert not omop._interrupted(RuntimeError("Query interrupted early"))
    assert not omop._interrupted(ValueError("Query interrupted")) and not omop._interrupted(RuntimeError(""))


def test_fingerprint_lists_every_input_that_changes_the_rows():
    from omop_behrt import __version__
    cdm = SimpleNamespace(db=SimpleNamespace(description="cdm.duckdb"), cdm_schema="cdm", vocab_schema="voc",
                          results_schema="res")
    plain = omop.fingerprint(cdm, omop.ExtractOptions())
    assert plain == {"source": "cdm.duckdb", "cdm_schema": "cdm", "vocab_schema": "voc", "results_schema": "res",
                     "person_ids": None, "cohort": None, "start": None, "end": None,
                     "valid_dates": "1800-01-01..2999-12-31", "after_death_days": 60, "index_dates": None,
                     "inclusive": False, "check_duplicates": True, "version": __version__}
    ids = list(range(12, 0, -1)) + [3]
    got = omop.fingerprint(cdm, omop.ExtractOptions(person_ids=ids, cohort_id=4, cohort_table="ct",
                                                    start=dt.date(2001, 2, 3), end=dt.date(2002, 1, 1),
                                                    after_death_days=7, inclusive=True, check_duplicates=False))
    digest = hashlib.sha256(np.arange(1, 13, dtype=np.int64).tobytes()).hexdigest()[:16]
    assert got["person_ids"] == f"[1, 2, 3, 4, 5, 6, 7, 8, 9, 10] ... (12 ids, sha256 {digest})"
    assert (got["cohort"], got["start"], got["end"], got["after_death_days"], got["inclusive"],
            got["check_duplicates"]) == ("ct:4", "2001-02-03", "2002-01-01", 7, True, False)
    assert omop.fingerprint(cdm, omop.ExtractOptions(person_ids=[2, 1]))["person_ids"] == \
        f"[1, 2] (2 ids, sha256 {hashlib.sha256(np.array([1, 2], np.int64).tobytes()).hexdigest()[:16]})"


def test_visit_counts_merge_files_range_by_range_like_one_unique(tmp_path):
    """The distinct rebuilt (negative) and real (positive) visit ids over many sorted files, merged a bounded id
    range at a time, equal one np.unique over all of them, whatever the range size (ids shared between files,
    empty files, a lone file)."""
    rng = np.random.default_rng(7)
    files, every = [], []
    for i, n in enumerate([0, 1, 5_000, 40_000, 40_000, 12_345]):
        ids = np.unique(rng.integers(-60_000, 20_000, n))
        ids = ids[ids != 0]
        np.save(tmp_path / f"visits-{i}.npy", ids)
        files.append(tmp_path / f"visits-{i}.npy")
        every.append(ids)
    u = np.unique(np.concatenate(every))
    expected = (int((u < 0).sum()), int((u > 0).sum()))
    assert expected[0] > 40_000 and expected[1] > 10_000
    for chunk in (1, 999, 10_000, 1 << 22):
        assert omop_visits._visit_counts(files, chunk) == expected
    assert omop_visits._visit_counts(files[3:4], 1_000) == (int((every[3] < 0).sum()), int((every[3] > 0).sum()))
    assert omop_visits._visit_counts([], 10) == (0, 0)

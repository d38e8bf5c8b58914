"""The event-stream contract: schemas, validation errors that name the column, rebuilt visit ids, MEDS."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from omop_behrt import EventDir, EventSchemaError, from_meds, to_meds, validate_events, validate_persons
from omop_behrt.events import EVENTS_SCHEMA, ShardWriter, fill_rebuilt_visits, rebuilt_visit_ids, subjects_filter


def _events(**over):
    base = {"subject_id": [1, 1, 2], "time": [dt.datetime(2020, 1, 1, 8), dt.datetime(2020, 1, 1, 17),
                                             dt.datetime(2021, 5, 2)],
            "code": ["SNOMED/44054006", "LOINC/2339-0", "RxNorm/1049630"], "numeric_value": [None, 5.5, None],
            "visit_id": [None, None, 7], "domain": ["condition", "measurement", "drug"]}
    base.update(over)
    return pa.table(base)


def test_validate_conforms_types_and_fills_optional_columns():
    t = validate_events(_events())
    assert t.schema == EVENTS_SCHEMA
    assert t["numeric_value"].type == pa.float32() and t["concept_id"].null_count == 3


@pytest.mark.parametrize("over, match", [
    ({"code": ["44054006", "LOINC/2339-0", "x/y"]}, r"column 'code' must look like 'VOCAB/code'.*'44054006'"),
    ({"domain": ["condition", "labs", "drug"]}, r"column 'domain' has 'labs'"),
    ({"subject_id": [1, None, 2]}, r"column 'subject_id' has 1 null values"),
    ({"numeric_value": ["a", "b", "c"]}, r"column 'numeric_value' has type string, expected float"),
])
def test_validate_names_the_column(over, match):
    with pytest.raises(EventSchemaError, match=match):
        validate_events(_events(**over))


def test_validate_missing_required_column():
    with pytest.raises(EventSchemaError, match=r"required column 'code'"):
        validate_events(_events().drop(["code"]))


def test_validate_persons():
    ok = validate_persons(pa.table({"subject_id": [1, 2], "sex": ["F", "M"]}))
    assert ok.column_names == ["subject_id", "birth_date", "sex", "death_date", "source_id"]
    with pytest.raises(EventSchemaError, match=r"'subject_id' must be unique; 2 appears more than once"):
        validate_persons(pa.table({"subject_id": [1, 2, 2]}))
    with pytest.raises(EventSchemaError, match=r"column 'sex' has 'female'"):
        validate_persons(pa.table({"subject_id": [1], "sex": ["female"]}))


def test_rebuilt_visits_one_per_subject_day():
    t = fill_rebuilt_visits(validate_events(_events()))
    v = t["visit_id"].to_pylist()
    assert v[0] == v[1] < 0          # same subject, same day, no visit: one rebuilt visit
    assert v[2] == 7                 # a real visit is kept
    # deterministic and day-granular; different subjects or days give different ids
    ids = rebuilt_visit_ids(np.array([1, 1, 2, 1]), np.array([0, 86_400_000_000 - 1, 0, 86_400_000_000]))
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[3]}) == 3 and (ids < 0).all()
    big = rebuilt_visit_ids(np.array([2**62]), np.array([0]))
    assert big[0] < 0                # no overflow into positive (real) ids for huge subject ids


# -- MEDS ------------------------------------------------------------------------------------------
def test_meds_round_trip_eunomia(eunomia_events, tmp_path):
    info = to_meds(eunomia_events, tmp_path / "meds", dataset_name="eunomia")
    persons = eunomia_events.persons()
    n_birth = persons["birth_date"].length() - persons["birth_date"].null_count
    # events + MEDS_BIRTH + static sex + static source id (+ MEDS_DEATH: none in Eunomia)
    assert info["rows"] == 217014 + n_birth + 2694 + 2694
    data = pq.read_table(tmp_path / "meds" / "data" / "0.parquet")
    assert data.column_names[:5] == ["subject_id", "time", "code", "numeric_value", "text_value"]
    assert data["numeric_value"].type == pa.float32()
    # sorted by subject then time, static rows (null time) first
    keys = data.select(["subject_id", "time"]).to_pandas()
    assert keys["subject_id"].is_monotonic_increasing
    for _, g in keys.groupby("subject_id"):
        t = g["time"]
        assert t.isna().sum() == 2 and t.iloc[:2].isna().all() and t.dropna().is_monotonic_increasing
    assert pc.sum(pc.equal(data["code"], "MEDS_BIRTH")).as_py() == n_birth
    meta = json.loads((tmp_path / "meds" / "metadata" / "dataset.json").read_text())
    assert meta["meds_version"] == "0.4.0" and meta["dataset_name"] == "eunomia" and meta["etl_name"] == "omop-behrt"
    codes = pq.read_table(tmp_path / "meds" / "metadata" / "codes.parquet")
    assert codes.column_names == ["code", "description", "parent_codes"]
    assert codes.num_rows == pc.count_distinct(data["code"]).as_py()

    back = from_meds(tmp_path / "meds", tmp_path / "back")
    keys = [("subject_id", "ascending"), ("time", "ascending"), ("code", "ascending"),
            ("visit_id", "ascending"), ("numeric_value", "ascending")]
    assert back.read_events().sort_by(keys).equals(eunomia_events.read_events().sort_by(keys))
    assert back.persons().sort_by("subject_id").equals(persons.sort_by("subject_id"))
    assert back.observation_periods().num_rows == eunomia_events.observation_periods().num_rows
    # while an extraction (or another from-meds) writes that event directory, from-meds is refused, not interleaved
    from omop_behrt.events import extracting
    files = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "back").rglob("*.parquet")}
    with extracting(tmp_path / "back"):
        with pytest.raises(ValueError, match="another extraction is writing this event directory"):
            from_meds(tmp_path / "meds", tmp_path / "back")
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "back").rglob("*.parquet")} == files


def test_meds_round_trip_with_deaths_and_shards(synthea_dir, tmp_path):
    from omop_behrt.adapters import omop
    omop.extract(synthea_dir, tmp_path / "ev", progress=False)
    src = EventDir.open(tmp_path / "ev")
    info = to_meds(src, tmp_path / "meds", rows_per_shard=10_000)
    assert info["shards"] == 3
    shards = [pq.read_table(f) for f in sorted((tmp_path / "meds" / "data").glob("*.parquet"))]
    seen = [set(s["subject_id"].to_pylist()) for s in shards]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])     # each subject in exactly one shard
    deaths = sum(pc.sum(pc.equal(s["code"], "MEDS_DEATH")).as_py() for s in shards)
    assert deaths == 14
    back = from_meds(tmp_path / "meds", tmp_path / "back")
    assert back.persons().sort_by("subject_id").equals(src.persons().sort_by("subject_id"))
    assert back.events().count_rows() == src.events().count_rows()


def test_from_foreign_meds(tmp_path):
    """MEDS written by another tool: no domain/visit columns, codes without a vocabulary prefix."""
    (tmp_path / "m" / "data").mkdir(parents=True)
    pq.write_table(pa.table({
        "subject_id": pa.array([5, 5, 5, 5], pa.int64()),
        "time": pa.array([None, dt.datetime(1990, 1, 1), dt.datetime(2020, 3, 1, 9), dt.datetime(2020, 3, 1, 10)],
                         pa.timestamp("us")),
        "code": ["GENDER//F", "MEDS_BIRTH", "LOINC/2339-0", "ADMISSION"],
        "numeric_value": pa.array([None, None, 99.0, None], pa.float32())}), tmp_path / "m" / "data" / "0.parquet")
    d = from_meds(tmp_path / "m", tmp_path / "ev")
    p = d.persons().to_pylist()[0]
    assert p["sex"] == "F" and p["birth_date"] == dt.date(1990, 1, 1)
    ev = d.read_events().sort_by("time").to_pylist()
    assert [e["code"] for e in ev] == ["LOINC/2339-0", "MEDS/ADMISSION"]
    assert [e["domain"] for e in ev] == ["measurement", "observation"]
    assert ev[0]["visit_id"] == ev[1]["visit_id"] < 0            # rebuilt from (subject, day)


def test_from_meds_rejects_non_meds(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a MEDS dataset"):
        from_meds(tmp_path, tmp_path / "ev")


# -- ShardWriter -------------------------------------------------------------------------------------------------
_KV = pa.schema([("key", pa.int64()), ("value", pa.int64())])


def _keyed_batches(counts: list[int], batch_rows: int) -> pa.Table:
    """Rows sorted by key (key k repeated counts[k] times), value = row number, cut into batches of batch_rows."""
    key = np.repeat(np.arange(len(counts)), counts)
    return pa.table({"key": key, "value": np.arange(len(key))}, schema=_KV).to_batches(max_chunksize=batch_rows)


def test_shard_writer_with_key_never_splits_a_key(tmp_path):
    """Shards close at the first key change past rows_per_shard, inside a batch or across batches; file names
    follow the pattern; the shards together are the input, row for row."""
    counts = [3, 9, 1, 1, 12, 2, 2, 2, 7, 30, 1, 4]                      # 74 rows
    batches = _keyed_batches(counts, batch_rows=5)
    w = ShardWriter(tmp_path, "x", _KV, rows_per_shard=10, key="key", name="{index}.parquet")
    for b in batches:
        w.write(b)
    files = w.close()
    assert [f.name for f in files] == [f"{i}.parquet" for i in range(len(files))]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)   # no .tmp left
    shards = [pq.read_table(f) for f in files]
    # expected cuts computed by hand from the counts: close once >= 10 rows, at the end of the key being written
    # keys 0-1 (12 rows) | 2-4 (14) | 5-8 (13) | 9 (30) | 10-11 (5)
    assert [s.num_rows for s in shards] == [12, 14, 13, 30, 5]
    keys = [set(s["key"].to_pylist()) for s in shards]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    assert pa.concat_tables(shards).equals(pa.Table.from_batches(batches)) and w.rows == 74


def test_shard_writer_without_key_writes_whole_batches(tmp_path):
    """The extraction's shards: named prefix-00000.parquet, a batch never split, closed once full."""
    w = ShardWriter(tmp_path, "drug_exposure", _KV, rows_per_shard=10)
    for b in _keyed_batches([7] * 4, batch_rows=7):
        w.write(b)
    files = w.close()
    assert [f.name for f in files] == ["drug_exposure-00000.parquet", "drug_exposure-00001.parquet"]
    assert [pq.read_metadata(f).num_rows for f in files] == [14, 14]


def test_shard_writer_empty_shard(tmp_path):
    """No row: no file, unless empty_shard asks for one (MEDS readers expect data/0.parquet)."""
    assert ShardWriter(tmp_path / "a", "p", _KV).close() == []
    files = ShardWriter(tmp_path / "b", "", _KV, key="key", name="{index}.parquet", empty_shard=True).close()
    assert [f.name for f in files] == ["0.parquet"]
    t = pq.read_table(files[0])
    assert t.num_rows == 0 and t.schema == _KV


def test_subjects_filter_skips_row_groups(tmp_path):
    """The filter keeps exactly the subjects' rows and, on rows sorted by subject, lets the scan skip the row
    groups outside their range: pyarrow prunes by ``isin`` alone only for a few dozen values, and a chunk holds
    thousands of persons."""
    import pyarrow.dataset as ds
    subject = np.repeat(np.arange(5000, dtype=np.int64), 2)
    pq.write_table(pa.table({"subject_id": subject, "x": np.arange(len(subject))}), tmp_path / "t.parquet",
                   row_group_size=1000)                               # 10 row groups of 500 subjects each
    d = ds.dataset(tmp_path / "t.parquet", format="parquet")
    wanted = np.arange(2100, 2400, 2, dtype=np.int64)                 # 150 subjects in row group 4
    got = d.to_table(filter=subjects_filter(wanted))
    assert got.column("subject_id").to_pylist() == np.repeat(wanted, 2).tolist()
    [frag] = d.get_fragments()
    assert len(frag.split_by_row_group(subjects_filter(wanted))) == 1
    assert len(frag.split_by_row_group(ds.field("subject_id").isin(pa.array(wanted)))) == 10
    assert d.to_table(filter=subjects_filter(np.array([], np.int64))).num_rows == 0

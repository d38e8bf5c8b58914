"""MEDS output checked by the official validator (the `meds` package's schemas), not by our own reading of the spec.

`to_meds` on the Eunomia events and on the FHIR fixtures (tests/data/fhir): every data shard passes
``meds.DataSchema.validate`` with its core columns typed exactly as MEDS types them, codes.parquet passes
``CodeMetadataSchema``, dataset.json passes ``DatasetMetadataSchema``; MEDS's layout rules (each subject in one
shard, contiguous and time-sorted, every data code listed in codes.parquet) hold; label files valid under
``LabelSchema`` are read as index dates. Without the `meds` package the module skips visibly.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

meds = pytest.importorskip("meds", reason="the `meds` package (official MEDS schemas) is not installed")

from omop_behrt.tasks import cohorts  # noqa: E402
from omop_behrt.adapters import fhir  # noqa: E402
from omop_behrt.adapters.meds import from_meds, to_meds  # noqa: E402
from omop_behrt.events import EventDir  # noqa: E402

FHIR = Path(__file__).parent / "data" / "fhir"


def validate_meds_dataset(root: Path) -> list[pa.Table]:
    """Validate a MEDS dataset at ``root`` with the meds schemas and MEDS's layout rules; returns its shards."""
    shards = [pq.read_table(f) for f in sorted((root / "data").glob("*.parquet"))]
    assert shards, f"{root}/data holds no parquet shard"
    want = meds.DataSchema.schema()
    for s in shards:
        meds.DataSchema.validate(s)     # raises on a mistyped / missing / null-where-forbidden column
        for f in want:                  # and the core columns carry exactly MEDS's types
            assert s.schema.field(f.name).type == f.type, f"data column {f.name}: {s.schema.field(f.name).type}"
        # contiguous per subject and time-sorted inside it (static rows, null time, first)
        sid = s["subject_id"].to_numpy()
        assert (np.diff(sid) >= 0).all()
        t = pc.fill_null(s["time"].cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()
        same = sid[1:] == sid[:-1]
        assert (t[1:][same] >= t[:-1][same]).all()
    seen = [set(pc.unique(s["subject_id"]).to_pylist()) for s in shards]
    assert sum(len(x) for x in seen) == len(set().union(*seen)), "a subject is split across shards"

    codes = pq.read_table(root / "metadata" / "codes.parquet")
    meds.CodeMetadataSchema.validate(codes)
    for f in meds.CodeMetadataSchema.schema():
        assert codes.schema.field(f.name).type == f.type, f"codes column {f.name}"
    data_codes = set().union(*(set(pc.unique(s["code"]).to_pylist()) for s in shards))
    assert data_codes == set(codes["code"].to_pylist())   # every code in the data is described, and no other

    meta = json.loads((root / "metadata" / "dataset.json").read_text())
    meds.DatasetMetadataSchema.validate(meta)
    assert meta["etl_name"] == "omop-behrt" and dt.datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    return shards


def test_eunomia_to_meds_passes_the_meds_schemas(eunomia_events, tmp_path):
    info = to_meds(eunomia_events, tmp_path / "meds", dataset_name="eunomia")
    shards = validate_meds_dataset(tmp_path / "meds")
    assert sum(s.num_rows for s in shards) == info["rows"] == 217014 + 2694 * 3   # events + birth, sex, source id
    persons = eunomia_events.persons()
    assert sum(pc.sum(pc.equal(s["code"], "MEDS_BIRTH")).as_py() for s in shards) == persons.num_rows == 2694
    text = pc.drop_null(shards[0]["text_value"])
    assert len(text) == pc.count(persons["source_id"]).as_py()     # the person source ids ride in text_value


def test_sharded_output_passes_the_meds_schemas(eunomia_events, tmp_path):
    info = to_meds(eunomia_events, tmp_path / "meds", rows_per_shard=50_000)
    shards = validate_meds_dataset(tmp_path / "meds")
    assert info["shards"] == len(shards) == 5


def test_small_shards_hold_whole_subjects_in_order(eunomia_events, tmp_path):
    """Shards cut at subject boundaries across stream batches: each shard but the last holds >= rows_per_shard
    rows and the first subject-boundary past it; together they are the one-shard output, row for row; codes
    carry the source's descriptions."""
    whole = to_meds(eunomia_events, tmp_path / "one")
    info = to_meds(eunomia_events, tmp_path / "many", rows_per_shard=7_000)
    validate_meds_dataset(tmp_path / "many")
    shards = [pq.read_table(tmp_path / "many" / "data" / f"{i}.parquet") for i in range(info["shards"])]
    assert info["rows"] == whole["rows"] and info["subjects"] == whole["subjects"] == 2694
    assert len(list((tmp_path / "many" / "data").glob("*.parquet"))) == info["shards"] == 225_096 // 7_000
    for s in shards[:-1]:
        n = s.num_rows
        first_of_last = pc.index(s["subject_id"], s["subject_id"][-1]).as_py()
        assert n >= 7_000 and first_of_last < 7_000       # closed by the subject running past the size, no later
    one = pq.read_table(tmp_path / "one" / "data" / "0.parquet")
    assert pa.concat_tables(shards).equals(one)
    codes = pq.read_table(tmp_path / "many" / "metadata" / "codes.parquet")
    described = dict(zip(codes["code"].to_pylist(), codes["description"].to_pylist()))
    source = eunomia_events.descriptions()
    assert source.num_rows > 0 and all(described[c] == d for c, d in zip(source["code"].to_pylist(),
                                                                         source["description"].to_pylist())
                                       if c in described)
    assert sum(d is not None for d in described.values()) > 0.5 * len(described)


@pytest.mark.parametrize("source", ["bundles", "ndjson"])
def test_fhir_to_meds_passes_the_meds_schemas(source, tmp_path):
    """The case of issue 17: FHIR persons carry source ids, so text_value is non-null and its type is checked."""
    fhir.extract(FHIR / source, tmp_path / "ev", progress=False)
    ev = EventDir.open(tmp_path / "ev")
    info = to_meds(ev, tmp_path / "meds", dataset_name=f"fhir-{source}")
    shards = validate_meds_dataset(tmp_path / "meds")
    n_persons = ev.persons().num_rows
    assert info["subjects"] == n_persons == {"bundles": 5, "ndjson": 13}[source]
    text = pa.concat_arrays([pc.drop_null(s["text_value"]).combine_chunks() for s in shards])
    assert len(text) == n_persons and text.type == pa.large_string()
    # and the validated dataset reads back into the same persons
    back = from_meds(tmp_path / "meds", tmp_path / "back")
    assert back.persons().sort_by("subject_id").equals(ev.persons().sort_by("subject_id"))
    assert back.events().count_rows() == ev.events().count_rows()


def test_the_validator_rejects_what_we_used_to_write(tmp_path):
    """Guard that the check is real: text_value as string (what to_meds wrote before) fails meds 0.4.1."""
    t = pa.table({"subject_id": pa.array([1], pa.int64()), "time": pa.array([None], pa.timestamp("us")),
                  "code": ["PERSON/SOURCE_ID"], "numeric_value": pa.array([None], pa.float32()),
                  "text_value": pa.array(["abc"], pa.string())})
    with pytest.raises(Exception, match="text_value"):
        meds.DataSchema.validate(t)
    meds.DataSchema.validate(t.set_column(4, "text_value", t["text_value"].cast(pa.large_string())))


def test_meds_labels_valid_under_label_schema_are_read(tmp_path):
    labels = meds.LabelSchema.align(pa.table({
        "subject_id": pa.array([7, 8, 8], pa.int64()),
        "prediction_time": pa.array([dt.datetime(2020, 1, 1, 12), dt.datetime(2019, 6, 1), dt.datetime(2021, 2, 3)],
                                    pa.timestamp("us")),
        "boolean_value": [True, False, True]}))
    meds.LabelSchema.validate(labels)
    (tmp_path / "labels").mkdir()
    pq.write_table(labels, tmp_path / "labels" / "0.parquet")
    ix = cohorts.index_dates_from_meds_labels(tmp_path / "labels", cohort_definition_id=3)
    assert ix["subject_id"].to_pylist() == [7, 8, 8]
    assert ix["index_date"].to_pylist() == labels["prediction_time"].to_pylist()
    assert ix["cohort_definition_id"].to_pylist() == [3, 3, 3]

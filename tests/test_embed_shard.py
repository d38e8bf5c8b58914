"""embed --shard I/N: N concurrent shard processes write exactly one unsharded run's rows, on every target."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from omop_behrt.tasks import cohorts
from omop_behrt.cli.main import main
from omop_behrt.vectors.embed import embed_cohort, fixed_shape_plan
from omop_behrt.vectors.embed_run import in_shard, parse_shard, person_hash
from omop_behrt.vectors.export import EmbeddingModelInfo, write_embeddings

# Each shard process: embed its shard, wait until both shards have their vectors, then write every target (in
# opposite orders), so the writes really overlap.
SHARD_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import pyarrow.csv as pcsv, torch
    from omop_behrt.tasks import cohorts
    from omop_behrt.vectors.embed import embed_cohort
    from omop_behrt.vectors.export import EmbeddingModelInfo, write_embeddings
    torch.set_num_threads(1)
    model, events, csv, work, i, targets = sys.argv[1:7]
    i = int(i)
    index = cohorts.index_dates_from_csv(csv, 1)
    res = embed_cohort(model, events, index, shard=(i, 2), device="cpu", progress=False)
    info = EmbeddingModelInfo.of_model_dir(model, res.provenance["model_checksum"], res.vectors.shape[1])
    Path(work, f"ready-{i}").touch()
    while not all(Path(work, f"ready-{k}").exists() for k in range(2)):
        time.sleep(0.05)
    for target in (json.loads(targets) if i == 0 else json.loads(targets)[::-1]):
        write_embeddings(target["out"], res.index, res.vectors, info, schema=target.get("schema"),
                         ohdsi_analysis_id=990, provenance=res.provenance, shard=(i, 2), cohort_definition_id=1)
""")


@pytest.fixture(scope="module")
def cohort(eunomia_db, tmp_path_factory):
    """The GI bleed cohort of Eunomia (479 persons) as index rows and as a CSV."""
    import shutil
    tmp = tmp_path_factory.mktemp("shard_cohort")
    cdm = tmp / "cdm.duckdb"
    shutil.copy(eunomia_db, cdm)
    cohorts.first_occurrence_cohort(cdm, 1, [192671], results_schema="results")
    index = cohorts.CohortTable(cdm, "results").read(1)
    csv = tmp / "cohort.csv"
    import pyarrow.csv as pcsv
    pcsv.write_csv(index.select(["subject_id", "index_date"]), csv)
    return index, csv


@pytest.fixture(scope="module")
def whole(tiny_model, eunomia_events, cohort):
    """One unsharded exact run: the reference every shard combination must reproduce bit for bit."""
    return embed_cohort(tiny_model, eunomia_events, cohort[0], device="cpu", progress=False, exact=True)


def _info(model_dir, res) -> EmbeddingModelInfo:
    return EmbeddingModelInfo.of_model_dir(model_dir, res.provenance["model_checksum"], res.vectors.shape[1])


def _read(target: dict) -> tuple[pa.Table, pa.Table, int]:
    """(patient_embedding sorted by subject, cohort_attribute sorted, registry rows) of a target."""
    out = str(target["out"])
    if out.endswith(".duckdb"):
        con = duckdb.connect(out, read_only=True)
        s = target.get("schema") or "results"
        emb = con.sql(f"SELECT * FROM {s}.patient_embedding").to_arrow_table()
        attrs = con.sql(f"SELECT * FROM {s}.cohort_attribute").to_arrow_table()
        models = con.execute(f"SELECT COUNT(*) FROM {s}.embedding_model").fetchall()[0][0]
        con.close()
    elif "://" in out:
        import sqlalchemy as sa
        engine = sa.create_engine(out)
        s = target["schema"]
        with engine.connect() as c:
            rows = c.execute(sa.text(f'SELECT cohort_definition_id, subject_id, index_date, model_id, embedding '
                                     f'FROM "{s}".patient_embedding')).fetchall()
            emb = pa.table({"cohort_definition_id": [r[0] for r in rows], "subject_id": [r[1] for r in rows],
                            "index_date": [r[2] for r in rows], "model_id": [r[3] for r in rows],
                            "embedding": pa.array([np.asarray(r[4], np.float32) for r in rows],
                                                  pa.list_(pa.float32()))})
            a = c.execute(sa.text(f'SELECT subject_id, attribute_definition_id, value_as_number '
                                  f'FROM "{s}".cohort_attribute')).fetchall()
            attrs = pa.table({"subject_id": [r[0] for r in a], "attribute_definition_id": [r[1] for r in a],
                              "value_as_number": [r[2] for r in a]})
            models = c.execute(sa.text(f'SELECT COUNT(*) FROM "{s}".embedding_model')).scalar()
        engine.dispose()
    else:
        emb = pq.read_table(f"{out}/patient_embedding.parquet")
        attrs = pq.read_table(f"{out}/cohort_attribute.parquet")
        models = pq.read_table(f"{out}/embedding_model.parquet").num_rows
    emb = emb.sort_by([("subject_id", "ascending"), ("index_date", "ascending")])
    attrs = attrs.select(["subject_id", "attribute_definition_id", "value_as_number"]).sort_by(
        [("subject_id", "ascending"), ("attribute_definition_id", "ascending")])
    return emb, attrs, models


def _of_shard(table: pa.Table, shard: tuple[int, int]) -> pa.Table:
    return table.filter(pa.array(in_shard(table["subject_id"].to_numpy(), shard)))


def _same(a: tuple, b: tuple) -> None:
    """Two targets' tables are equal: keys, registry count, vectors and attribute values bit for bit."""
    (ea, aa, ma), (eb, ab, mb) = a, b
    assert ea.num_rows == eb.num_rows and ma == mb == 1
    for col in ("cohort_definition_id", "subject_id", "model_id"):
        assert ea[col].to_pylist() == eb[col].to_pylist(), col
    assert [str(d) for d in ea["index_date"].to_pylist()] == [str(d) for d in eb["index_date"].to_pylist()]
    va = np.stack(ea["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    vb = np.stack(eb["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    assert va.tobytes() == vb.tobytes()
    assert aa.num_rows == ab.num_rows == ea.num_rows * va.shape[1]
    assert aa["subject_id"].to_pylist() == ab["subject_id"].to_pylist()
    assert np.array_equal(aa["value_as_number"].to_numpy(), ab["value_as_number"].to_numpy())


def _concurrent_shards(tiny_model, eunomia_events, csv, tmp_path, targets: list[dict]) -> None:
    """Two shard processes (0/2, 1/2) at once, each writing every target."""
    spec = json.dumps([{k: str(v) for k, v in t.items()} for t in targets])
    procs = [subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, str(tiny_model), str(eunomia_events.path),
                               str(csv), str(tmp_path), str(i), spec], stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]


def test_person_hash_and_shard_values():
    """splitmix64 of the id (its published first output for seed 0); the shards partition; bad shards refused."""
    assert int(person_hash(np.array([0]))[0]) == 0xE220A8397B1DCDAF
    ids = np.arange(-500, 20_000, dtype=np.int64)
    masks = np.stack([in_shard(ids, (i, 3)) for i in range(3)])
    assert (masks.sum(0) == 1).all() and abs(masks.sum(1) / len(ids) - 1 / 3).max() < 0.02
    assert parse_shard("1/2") == (1, 2) and parse_shard(None) is None
    for bad in ("2/2", "-1/2", "0/0", "a/b", "1", "1/2/3"):
        with pytest.raises(ValueError, match="shard must be I/N"):
            parse_shard(bad)


def test_fixed_shapes_make_a_vector_independent_of_its_batch():
    """Every batch of one padded length has the same row count, whatever the cohort."""
    lengths = np.array([5, 17, 17, 30, 64, 3])
    plan = fixed_shape_plan(lengths, 128, 64)
    assert sorted(int(i) for idx, _, n in plan for i in idx[:n]) == list(range(6))
    assert {T: len(idx) for idx, T, _ in plan} == {16: 8, 32: 4, 64: 2}
    capped = fixed_shape_plan(lengths, 4096, 64)            # at most FIXED_ROWS (16) rows, whatever the budget
    assert {T: len(idx) for idx, T, _ in capped} == {16: 16, 32: 16, 64: 16}
    assert {T: len(idx) for idx, T, _ in fixed_shape_plan(lengths, 4096, 64, rows_cap=4)} == {16: 4, 32: 4, 64: 4}


def test_default_run_is_bucketed_and_close_to_exact(tiny_model, eunomia_events, cohort, whole, tmp_path):
    """Unsharded runs default to length-bucketed batches: the same vectors up to float rounding, recorded as such;
    a resume that changes --exact is refused."""
    fast = embed_cohort(tiny_model, eunomia_events, cohort[0], device="cpu", progress=False,
                        work_dir=tmp_path / "w")
    assert fast.provenance["exact"] is False and whole.provenance["exact"] is True
    assert "batch_shapes" not in fast.provenance["run_fingerprint"]
    assert whole.provenance["run_fingerprint"]["batch_shapes"] == "fixed"
    assert fast.index["subject_id"].to_pylist() == whole.index["subject_id"].to_pylist()
    np.testing.assert_allclose(fast.vectors, whole.vectors, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"batch_shapes"):
        embed_cohort(tiny_model, eunomia_events, cohort[0], device="cpu", progress=False,
                     work_dir=tmp_path / "w", resume=True, exact=True)


def test_shards_reproduce_one_run(tiny_model, eunomia_events, cohort, whole, tmp_path):
    """In-process: the two shards' vectors are the unsharded run's, bit for bit; shards recorded; resume checked."""
    index = cohort[0]
    parts = [embed_cohort(tiny_model, eunomia_events, index, shard=f"{i}/2", device="cpu", progress=False,
                          chunk_persons=100, work_dir=tmp_path / f"w{i}") for i in range(2)]
    assert sum(p.index.num_rows for p in parts) == index.num_rows == 479
    assert min(p.index.num_rows for p in parts) > 200
    got = {s: v for p in parts for s, v in zip(p.index["subject_id"].to_pylist(), p.vectors)}
    ref = dict(zip(whole.index["subject_id"].to_pylist(), whole.vectors))
    assert got.keys() == ref.keys()
    assert all(got[s].tobytes() == ref[s].tobytes() for s in ref)
    assert parts[1].provenance["shard"] == "1/2" and parts[1].provenance["run_fingerprint"]["shard"] == "1/2"
    with pytest.raises(ValueError, match=r"shard: was '0/2', now '1/2'"):
        embed_cohort(tiny_model, eunomia_events, index, shard=(1, 2), device="cpu", progress=False,
                     chunk_persons=100, work_dir=tmp_path / "w0", resume=True)
    with pytest.raises(ValueError, match=r"shard: was '0/2', now None"):
        embed_cohort(tiny_model, eunomia_events, index, device="cpu", progress=False, chunk_persons=100,
                     work_dir=tmp_path / "w0", resume=True)


def test_concurrent_shards_into_duckdb_and_parquet(tiny_model, eunomia_events, cohort, whole, tmp_path):
    """2 shard processes at once into one DuckDB file and one Parquet folder == one unsharded write of each."""
    targets = [{"out": tmp_path / "shards.duckdb"}, {"out": tmp_path / "shards_pq"}]
    _concurrent_shards(tiny_model, eunomia_events, cohort[1], tmp_path, targets)
    info = _info(tiny_model, whole)
    for target, ref_out in zip(targets, [tmp_path / "one.duckdb", tmp_path / "one_pq"]):
        write_embeddings(ref_out, whole.index, whole.vectors, info, ohdsi_analysis_id=990)
        _same(_read(target), _read({"out": ref_out}))
    # a shard re-run replaces only its own persons' rows: shard 0 again with other vectors and half its rows
    mine = np.flatnonzero(in_shard(whole.index["subject_id"].to_numpy(), (0, 2)))
    half = mine[: len(mine) // 2]
    for target in targets:
        before = _read(target)[0]
        w = write_embeddings(target["out"], whole.index.take(half), whole.vectors[half] + 1, info,
                             ohdsi_analysis_id=990, shard=(0, 2))
        assert w.replaced == len(mine) and w.rows == len(half)
        after, attrs, models = _read(target)
        assert after.num_rows == whole.index.num_rows - len(mine) + len(half) and models == 1
        in0 = in_shard(after["subject_id"].to_numpy(), (0, 2))
        assert sorted(after["subject_id"].to_numpy()[in0]) == sorted(whole.index["subject_id"].to_numpy()[half])
        assert after.filter(pa.array(~in0)).equals(_of_shard(before, (1, 2)))
        assert attrs.num_rows == after.num_rows * whole.vectors.shape[1]
        # a plain write still replaces the whole (model, cohort)
        assert write_embeddings(target["out"], whole.index, whole.vectors, info,
                                ohdsi_analysis_id=990).replaced == after.num_rows
    with pytest.raises(ValueError, match=r"shard 1/2: \d+ rows belong to other shards"):
        write_embeddings(tmp_path / "x_pq", whole.index, whole.vectors, info, shard=(1, 2))


@pytest.mark.postgres
def test_concurrent_shards_into_postgres(tiny_model, eunomia_events, cohort, whole, tmp_path, pg_url, pg_schema):
    """2 shard processes at once into one PostgreSQL schema == one unsharded write into another schema."""
    from cdm_fixtures import drop_postgres_schema
    target = {"out": pg_url, "schema": pg_schema}
    _concurrent_shards(tiny_model, eunomia_events, cohort[1], tmp_path, [target])
    ref = {"out": pg_url, "schema": pg_schema + "_one"}
    try:
        write_embeddings(pg_url, whole.index, whole.vectors, _info(tiny_model, whole), schema=ref["schema"],
                         ohdsi_analysis_id=990)
        _same(_read(target), _read(ref))
        mine = in_shard(whole.index["subject_id"].to_numpy(), (1, 2))
        w = write_embeddings(pg_url, whole.index.filter(pa.array(mine)), whole.vectors[mine], _info(tiny_model, whole),
                             schema=pg_schema, ohdsi_analysis_id=990, shard=(1, 2))
        assert w.replaced == int(mine.sum())
        _same(_read(target), _read(ref))
    finally:
        drop_postgres_schema(pg_url, ref["schema"])


def test_cli_shards_and_bad_values(tiny_model, eunomia_events, cohort, whole, tmp_path, capsys):
    """The CLI: --shard 0/2 and 1/2 into one Parquet folder equal the unsharded run; a bad --shard is one line."""
    csv = str(cohort[1])
    base = ["embed", "--model", str(tiny_model), "--source", str(eunomia_events.path), "--cohort", csv,
            "--cohort-definition-id", "1", "--quiet", "--device", "cpu"]
    for i in range(2):
        assert main([*base, "--out", str(tmp_path / "p"), "--shard", f"{i}/2"]) == 0
    out = capsys.readouterr().out
    assert "(shard 1/2 of 479)" in out
    t = pq.read_table(tmp_path / "p" / "patient_embedding.parquet").sort_by("subject_id")
    ref = whole.index.append_column("v", pa.array(list(whole.vectors), pa.list_(pa.float32()))).sort_by("subject_id")
    assert t["subject_id"].to_pylist() == ref["subject_id"].to_pylist()
    assert np.stack(t["embedding"].to_numpy(zero_copy_only=False)).tobytes() == \
        np.stack(ref["v"].to_numpy(zero_copy_only=False)).tobytes()
    runs = [json.loads(line) for line in (tmp_path / "p" / "embedding_run.jsonl").read_text().splitlines()]
    assert [r["shard"] for r in runs] == ["0/2", "1/2"] and sum(r["exported"] for r in runs) == 479
    assert pc.sum(pc.equal(t["cohort_definition_id"], 1)).as_py() == 479
    for bad in ("2/2", "x", "0/0"):
        assert main([*base, "--out", str(tmp_path / "bad"), "--shard", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "shard must be I/N" in err[0]
    assert not (tmp_path / "bad").exists()


def test_a_shard_without_persons(tiny_model, eunomia_events, cohort, tmp_path):
    """A shard that draws none of the cohort's persons (a 2-person cohort in 16 shards leaves most empty) returns
    no rows instead of failing on the empty subject filter; the shards together are the cohort."""
    from omop_behrt.vectors.embed_run import in_shard, parse_shard
    index = cohort[0].slice(0, 2)
    subjects = index["subject_id"].to_numpy()
    empty = next(i for i in range(16) if not in_shard(subjects, parse_shard(f"{i}/16")).any())
    res = embed_cohort(tiny_model, eunomia_events, index, shard=f"{empty}/16", device="cpu", progress=False,
                       work_dir=tmp_path / "w")
    assert res.index.num_rows == 0 and res.vectors.shape == (0, res.vectors.shape[1])
    rows = sum(embed_cohort(tiny_model, eunomia_events, index, shard=f"{i}/16", device="cpu", progress=False,
                            work_dir=tmp_path / f"w{i}").index.num_rows
               for i in range(16) if in_shard(subjects, parse_shard(f"{i}/16")).any())
    assert rows == 2

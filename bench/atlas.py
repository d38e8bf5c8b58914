"""ATLAS cohort generation: the 26 Phenotype Library definitions on Eunomia, ours against ohdsi-circepy's own engine.

    python bench/atlas.py [--copies 1,10] [--rounds 3] [--postgres URL] [--spark] [--spark-rounds 1]

omop-behrt generates each definition through CIRCE's OHDSI SQL, translated by sqlrender and run inside the
database (`atlas.generate_cohort_set`). The peer is ohdsi-circepy's own `generate_cohort_set`, which compiles
the same definitions to Ibis expressions and executes them on a DuckDB backend. Both run on the same DuckDB CDM
(Eunomia, or Eunomia replicated ``copies`` times with person and row ids shifted), alternately, ``rounds`` times;
the per-cohort person counts of the two are compared. With ``--postgres``, ours also runs on PostgreSQL (x1); with
``--spark``, on Apache Spark in local mode (``local[2]``, Eunomia x1 loaded through Parquet, no Delta Lake: CIRCE's
working tables as Parquet tables), its per-cohort persons compared with DuckDB's. Prints a table and writes
bench/out/atlas.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from omop_behrt.tasks import atlas  # noqa: E402
from omop_behrt.study.demo import eunomia_path  # noqa: E402

OUT = Path(__file__).parent / "out"
PHENOTYPES = ROOT / "tests" / "data" / "ohdsi_phenotypes" / "cohorts.csv"
ID_SHIFT = 10_000_000


def replicate(copies: int, work: Path) -> Path:
    """Eunomia with its person-level tables repeated ``copies`` times (person and row ids shifted per copy)."""
    dst = work / f"eunomia_x{copies}.duckdb"
    shutil.copy(eunomia_path(), dst)
    if copies == 1:
        return dst
    con = duckdb.connect(str(dst))
    tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.columns WHERE "
                                        "table_schema = 'main' AND lower(column_name) = 'person_id'").fetchall()]
    for t in tables:
        cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                          "table_schema = 'main' AND table_name = $t ORDER BY ordinal_position",
                                          {"t": t}).fetchall()]
        shifted = ", ".join(f'"{c}" + r * {ID_SHIFT} AS "{c}"' if c.lower() == "person_id" or
                            c.lower().endswith("_occurrence_id") or c.lower() in (f"{t}_id", "visit_detail_id")
                            else f'"{c}"' for c in cols)
        con.execute(f'CREATE TABLE "_{t}" AS SELECT {shifted} FROM main."{t}" CROSS JOIN range({copies}) c(r)')
        con.execute(f'DROP TABLE main."{t}"')
        con.execute(f'ALTER TABLE "_{t}" RENAME TO "{t}"')
    con.close()
    return dst


def clean_copy(cdm: Path) -> Path:
    """The same CDM with lower-case column names and the DDL's types (what circepy's Ibis engine needs: it fails
    on Eunomia's upper-case columns and text value_as_number); not timed."""
    from omop_behrt.db.cdm import READ_AS, ddl_types, type_kind
    dst = cdm.with_name(cdm.stem + "_clean.duckdb")
    shutil.copy(cdm, dst)
    con = duckdb.connect(str(dst))
    ddl = ddl_types("5.3")
    for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
                            ).fetchall():
        cols = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                           "'main' AND table_name = $t ORDER BY ordinal_position", {"t": t}).fetchall()
        sel = []
        for c, ty in cols:
            kind = ddl.get(t.lower(), {}).get(c.lower())
            expr = f'"{c}"'
            if kind in READ_AS and type_kind(ty) != kind:
                expr = f"TRY_CAST({expr} AS {READ_AS[kind]})"
            sel.append(f'{expr} AS "{c.lower()}"')
        con.execute(f'CREATE TABLE "_{t}" AS SELECT {", ".join(sel)} FROM main."{t}"')
        con.execute(f'DROP TABLE main."{t}"')
        con.execute(f'ALTER TABLE "_{t}" RENAME TO "{t}"')
    con.close()
    return dst


def ours(cdm: Path, defs) -> tuple[float, dict[int, int]]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gens = atlas.generate_cohort_set(cdm, defs)
    return time.perf_counter() - t0, {g.cohort_id: g.persons for g in gens}


PEER = """
import json, sys, time
import ibis
from circe.api import CohortDefinitionSet, cohort_expression_from_json, generate_cohort_set
cdm, defs = sys.argv[1], json.loads(sys.argv[2])
cds = CohortDefinitionSet()
for cid, name, path in defs:
    cds.add(cid, name, cohort_expression_from_json(open(path).read()))
con = ibis.duckdb.connect(cdm)
t0 = time.perf_counter()
results = generate_cohort_set(cds, backend=con, cdm_schema="main", cohort_table="peer_cohort", stop_on_error=False)
seconds = time.perf_counter() - t0
rows = con.raw_sql("SELECT cohort_definition_id, COUNT(DISTINCT subject_id) FROM peer_cohort GROUP BY 1").fetchall()
print(json.dumps({"seconds": seconds, "persons": {str(k): v for k, v in rows},
                  "failed": {str(r.cohort_id): str(r.error)[:200] for r in results if r.status == "FAILED"}}))
"""


def peer(python: str, cdm: Path, defs) -> tuple[float, dict[int, int], dict[str, str]]:
    """ohdsi-circepy's Ibis engine on a copy of the same file, in its own environment (its Ibis needs
    duckdb < 2); returns seconds, persons per cohort and the failures with their errors."""
    import subprocess
    copy = cdm.with_name(cdm.stem + "_peer.duckdb")
    shutil.copy(cdm, copy)
    spec = json.dumps([[d.cohort_id, d.name, d.origin] for d in defs])
    out = subprocess.run([python, "-c", PEER, str(copy), spec], capture_output=True, text=True, check=True)
    copy.unlink()
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["seconds"], {int(k): v for k, v in res["persons"].items()}, res["failed"]


def on_spark(cdm: Path, defs, rounds: int, duckdb_counts: dict[int, int], persons: int, work: Path) -> dict:
    """Ours on Spark local[2] (session start and the Parquet load not timed); persons per cohort against DuckDB's."""
    from omop_behrt.db.spark import QUICK_CONF, SparkDatabase, load_duckdb_cdm, local_session
    t0 = time.perf_counter()
    spark = local_session("local[2]", "2g", app="bench-atlas", conf={**QUICK_CONF,
                                                                    "spark.sql.warehouse.dir": str(work / "wh")})
    spark.sparkContext.setLogLevel("ERROR")
    load_duckdb_cdm(spark, cdm, "eunomia", work / "spark_parquet")
    start = time.perf_counter() - t0
    ts, counts = [], {}
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gens = atlas.generate_cohort_set(SparkDatabase(spark, "eunomia"), defs, results_schema="results")
            ts.append(time.perf_counter() - t0)
            counts = {g.cohort_id: g.persons for g in gens}
    finally:
        spark.stop()
    return {"copies": 1, "persons": persons, "engine": "omop-behrt (Spark local[2])", "median_s": statistics.median(ts),
            "min_s": min(ts), "max_s": max(ts), "spark_start_and_load_s": round(start, 1),
            "cohorts_agreeing": sum(counts.get(d.cohort_id, 0) == duckdb_counts.get(d.cohort_id, 0) for d in defs),
            "agreeing_with": "omop-behrt (DuckDB)", "peer_failed": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", default="1,10", help="Eunomia replication factors, comma separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--postgres", help="also run ours on this PostgreSQL URL (Eunomia x1 copied into a schema)")
    ap.add_argument("--peer-python", default=".bench-venvs/circepy/bin/python",
                    help="python of a venv with the peer: python3 -m venv .bench-venvs/circepy && "
                         ".bench-venvs/circepy/bin/pip install ohdsi-circepy 'duckdb<2'")
    ap.add_argument("--spark", action="store_true", help="also run ours on Spark local[2] (x1)")
    ap.add_argument("--spark-rounds", type=int, default=1, help="rounds on Spark (a round takes minutes)")
    args = ap.parse_args()
    defs = atlas.read_cohort_set(PHENOTYPES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for copies in [int(c) for c in args.copies.split(",")]:
            cdm = replicate(copies, Path(tmp))
            persons = duckdb.connect(str(cdm), read_only=True).execute("SELECT COUNT(*) FROM person").fetchall()
            clean = clean_copy(cdm)
            times = {"omop-behrt (DuckDB)": [], "omop-behrt, clean copy": [], "circepy Ibis, clean copy": []}
            agree, failed = None, {}
            for _ in range(args.rounds):
                s, ours_counts = ours(cdm, defs)
                times["omop-behrt (DuckDB)"].append(s)
                s, clean_counts = ours(clean, defs)
                times["omop-behrt, clean copy"].append(s)
                assert clean_counts == ours_counts, "typed views and a typed copy disagree"
                s, peer_counts, failed = peer(args.peer_python, clean, defs)
                times["circepy Ibis, clean copy"].append(s)
                agree = sum(ours_counts.get(d.cohort_id, 0) == peer_counts.get(d.cohort_id, 0) for d in defs)
            for name, ts in times.items():
                rows.append({"copies": copies, "persons": persons[0][0], "engine": name,
                             "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                             "cohorts_agreeing": agree, "peer_failed": len(failed), "peer_errors": failed})
            if args.postgres and copies == 1:
                import uuid

                from cdm_fixtures import copy_duckdb_to_postgres, drop_postgres_schema
                schema = "bench_atlas_" + uuid.uuid4().hex[:8]
                copy_duckdb_to_postgres(cdm, args.postgres, schema)
                try:
                    ts = []
                    for _ in range(args.rounds):
                        t0 = time.perf_counter()
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            atlas.generate_cohort_set(args.postgres, defs, cdm_schema=schema,
                                                      results_schema=schema + "_res")
                        ts.append(time.perf_counter() - t0)
                    rows.append({"copies": 1, "persons": persons[0][0], "engine": "omop-behrt (PostgreSQL)",
                                 "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                                 "cohorts_agreeing": None, "peer_failed": None})
                finally:
                    drop_postgres_schema(args.postgres, schema)
                    drop_postgres_schema(args.postgres, schema + "_res")
            if args.spark and copies == 1:
                rows.append(on_spark(cdm, defs, args.spark_rounds, ours_counts, persons[0][0], Path(tmp)))
    load = os.getloadavg()[0]
    print(f"26 Phenotype Library cohorts, {args.rounds} rounds, load {load:.1f}")
    print(f"{'copies':>6} {'persons':>8}  {'engine':<24} {'median s':>8} {'min-max':>13}  agree  peer failed")
    for r in rows:
        ratio = ""
        base = next((x for x in rows if x["copies"] == r["copies"] and x["engine"] == "circepy Ibis, clean copy"), None)
        if base and r["engine"] != base["engine"]:
            ratio = f"  {base['median_s'] / r['median_s']:.2f}x the peer's speed"
        print(f"{r['copies']:>6} {r['persons']:>8,}  {r['engine']:<24} {r['median_s']:>8.2f} "
              f"{r['min_s']:>6.2f}-{r['max_s']:<6.2f} {r['cohorts_agreeing'] if r['cohorts_agreeing'] is not None else '':>5}"
              f"  {r['peer_failed'] if r['peer_failed'] is not None else ''}{ratio}")
    OUT.mkdir(exist_ok=True)
    (OUT / "atlas.json").write_text(json.dumps({"rows": rows, "load": load, "rounds": args.rounds}, indent=1))


if __name__ == "__main__":
    main()

"""A first-occurrence cohort built in Spark (local mode) and in DuckDB, with two versions of its SQL, alternately.

The cohort's end date is the end of the observation period holding its start. ``subquery``: the SQL as it was (a
correlated subquery per cohort row, which Spark decorrelates into a nested loop of the distinct start dates against
every observation period); ``join``: sql/cohorts/first_occurrence.sql now (a join on the person). Same CDM for
both (Eunomia replicated, bench/spark.py's builder), same concepts, the same rows written (checked). Prints a table
with medians and min-max, writes JSON.

    python bench/cohorts_spark.py                    # Eunomia x4 (10,776 persons), 3 rounds
    python bench/cohorts_spark.py --copies 20 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from spark import CLINICAL, COPIED, build_eunomia  # noqa: E402  (bench/spark.py: Eunomia replicated, its tables)

#: the SQL before the join (commit 33b3ad7): the period's end by a correlated subquery
SUBQUERY_HEAD = """INSERT INTO {cohort_table} (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date)
SELECT :cohort_definition_id, f.person_id, f.start_date,
       COALESCE((SELECT MAX(CAST(op.{op_end} AS DATE)) FROM {observation_period} op
                 WHERE op.{op_person_id} = f.person_id
                   AND f.start_date BETWEEN CAST(op.{op_start} AS DATE) AND CAST(op.{op_end} AS DATE)),
                f.start_date)
"""
CONCEPTS = [192671, 1118084, 1124300, 1177480, 1115008]      # GI bleed and four NSAIDs: most persons have one


def subquery_sql(join_sql: str) -> str:
    """The template as it was, made from today's: its FROM (...) f kept, the join and GROUP BY replaced."""
    body = join_sql[join_sql.index("FROM (\n"):join_sql.index("\nLEFT JOIN")]
    return SUBQUERY_HEAD + body + "\n"


def measure(rounds: int, spark, db: Path, versions: dict[str, str], runs: dict, rows: dict) -> None:
    """Build the cohort ``rounds`` times per engine and SQL version, alternating which version goes first; the
    template is swapped in by patching the cohort module's loader (restored by the caller)."""
    from omop_behrt.db import database
    from omop_behrt.db.spark import SparkDatabase
    from omop_behrt.tasks import cohorts
    real_load = database.load_sql
    for r in range(rounds):
        for engine in ("spark", "duckdb"):
            for version in (("join", "subquery") if r % 2 == 0 else ("subquery", "join")):
                text = versions[version]
                cohorts.load_sql = lambda name: (database.TemplateSql(text, name)   # noqa: E731
                                                 if name == "cohorts/first_occurrence.sql" else real_load(name))
                source = SparkDatabase(spark, "bench_cdm") if engine == "spark" else db
                t = time.perf_counter()
                n = cohorts.first_occurrence_cohort(source, 1, CONCEPTS, results_schema="bench_results",
                                                    descendants=False)
                runs.setdefault((engine, version), []).append(time.perf_counter() - t)
                assert rows.setdefault((engine, version), n) == n
                print(f"round {r + 1} {engine:6s} {version:8s} {runs[(engine, version)][-1]:7.2f} s  {n:,} persons",
                      flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4, help="Eunomia replicas (2,694 persons each)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "cohorts_spark")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "cohorts_spark.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from omop_behrt.db import database
    from omop_behrt.db.spark import QUICK_CONF, load_duckdb_cdm, local_session
    from omop_behrt.tasks import cohorts

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    db = args.workdir / f"eunomia_x{args.copies}.duckdb"
    info = build_eunomia(args.copies, db)
    spark = local_session("local[2]", conf={**QUICK_CONF, "spark.sql.warehouse.dir": str(args.workdir / "wh")})
    spark.sparkContext.setLogLevel("ERROR")
    load_duckdb_cdm(spark, db, "bench_cdm", args.workdir / "parquet", tables=CLINICAL + COPIED)
    real_load = database.load_sql
    join_sql = str(real_load("cohorts/first_occurrence.sql"))
    versions = {"join": join_sql, "subquery": subquery_sql(join_sql)}
    runs: dict[tuple[str, str], list[float]] = {}
    rows: dict[tuple[str, str], int] = {}
    try:
        measure(args.rounds, spark, db, versions, runs, rows)
    finally:
        cohorts.load_sql = real_load
        spark.stop()
    assert len(set(rows.values())) == 1, f"the versions wrote different cohorts: {rows}"
    table = []
    print(f"\nEunomia x{args.copies}: {info['persons']:,} persons; load {os.getloadavg()[0]:.2f}")
    print(f"{'engine':8s} {'subquery s (min-max)':>24s} {'join s (min-max)':>22s} {'join/subquery':>14s}")
    for engine in ("spark", "duckdb"):
        old, new = runs[(engine, "subquery")], runs[(engine, "join")]
        mo, mn = statistics.median(old), statistics.median(new)
        table.append({"engine": engine, "subquery_median_s": mo, "join_median_s": mn, "ratio_join_over_subquery":
                      mn / mo, "subquery_s": old, "join_s": new, "cohort_persons": rows[(engine, "join")]})
        print(f"{engine:8s} {mo:9.2f} ({min(old):5.1f}-{max(old):5.1f}) {mn:9.2f} ({min(new):5.1f}-{max(new):5.1f}) "
              f"{mn / mo:13.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cdm": info, "copies": args.copies, "rounds": args.rounds, "concepts": CONCEPTS,
                                     "load": os.getloadavg(), "rows": table}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

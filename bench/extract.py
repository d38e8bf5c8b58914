"""Benchmark `extract` (OMOP CDM in a DuckDB file -> event directory) at two sizes, next to a raw-copy baseline.

Scales a Synthea OMOP export up by replicating its persons with new ids and shifted dates into a DuckDB file,
then, each in its own process (so peak RSS is that run's alone):
  * extract : omop_behrt.adapters.omop.extract, end to end (SQL, quarantine split, Parquet shards, summary)
  * raw copy: the floor: DuckDB COPY of the same tables' columns to Parquet with no mapping at all
Prints a table and writes bench/out/extract.json.

    python bench/extract.py                       # 200k and 1M persons from the in-repo Synthea subset
    python bench/extract.py --sizes 20000,100000  # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
CLINICAL = ["person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
            "procedure_occurrence", "measurement", "observation", "device_exposure", "death"]
ID_COLUMNS = {"person_id", "visit_occurrence_id", "preceding_visit_occurrence_id", "condition_occurrence_id",
              "drug_exposure_id", "procedure_occurrence_id", "measurement_id", "observation_id",
              "observation_period_id", "device_exposure_id"}
STRIDE = 10_000_000   # id offset per replica (source ids are below this)


def build_cdm(source: Path, persons: int, path: Path) -> dict:
    """A DuckDB CDM with ``persons`` persons: the source's persons replicated with new ids and shifted dates."""
    con = duckdb.connect(str(path))
    src_persons = con.execute(f"SELECT COUNT(*) FROM read_csv('{source}/PERSON.csv.gz', header=true)").fetchall()[0][0]
    reps = -(-persons // src_persons)
    for table in CLINICAL + ["concept"]:
        f = source / f"{table.upper()}.csv.gz"
        if not f.exists():
            continue
        reader = f"read_csv('{f}', header=true, null_padding=true, sample_size=-1)"
        if table == "concept":
            con.execute(f"CREATE TABLE concept AS SELECT * FROM {reader}")
            continue
        cols = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
        exprs = []
        for name, typ, *_ in cols:
            q = f'"{name}"'
            if name in ID_COLUMNS:
                exprs.append(f"CAST({q} AS BIGINT) + r.range * {STRIDE} AS {q}")
            elif typ in ("DATE", "TIMESTAMP"):
                exprs.append(f"CAST({q} + INTERVAL (r.range % 365) DAY AS {typ}) AS {q}")
            else:
                exprs.append(q)
        con.execute(f"CREATE TABLE {table} AS SELECT {', '.join(exprs)} FROM {reader} "
                    f"CROSS JOIN range({reps}) r WHERE r.range * {src_persons} < {persons} OR r.range = 0")
    n_persons = con.execute("SELECT COUNT(*) FROM person").fetchall()[0][0]
    n_rows = sum(con.execute(f"SELECT COUNT(*) FROM {t}").fetchall()[0][0] for t in CLINICAL[2:]
                 if con.execute("SELECT COUNT(*) FROM duckdb_tables() WHERE table_name = $t", {"t": t}).fetchall()[0][0])
    con.close()
    return {"persons": n_persons, "source_rows": n_rows, "db_bytes": path.stat().st_size}


EXTRACT = """
import sys, json, time
from omop_behrt.adapters import omop
t = time.perf_counter()
s = omop.extract(sys.argv[1], sys.argv[2], progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "events": s.events_out, "quarantined": s.quarantined}))
"""

RAW_COPY = """
import sys, json, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
t = time.perf_counter(); n = 0
for table, cols in [("visit_occurrence", "person_id, visit_start_date, visit_concept_id, visit_occurrence_id"),
                    ("condition_occurrence", "person_id, condition_start_date, condition_concept_id, visit_occurrence_id"),
                    ("drug_exposure", "person_id, drug_exposure_start_date, drug_concept_id, visit_occurrence_id"),
                    ("procedure_occurrence", "person_id, procedure_date, procedure_concept_id, visit_occurrence_id"),
                    ("measurement", "person_id, measurement_date, measurement_concept_id, visit_occurrence_id"),
                    ("observation", "person_id, observation_date, observation_concept_id, visit_occurrence_id"),
                    ("device_exposure", "person_id, device_exposure_start_date, device_concept_id, visit_occurrence_id")]:
    con.execute(f"COPY (SELECT {cols} FROM {table}) TO '{sys.argv[2]}/{table}.parquet' (FORMAT parquet)").fetchall()
    n += con.execute(f"SELECT COUNT(*) FROM {table}").fetchall()[0][0]
print(json.dumps({"seconds": time.perf_counter() - t, "events": n}))
"""


def run_measured(code: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run a snippet in a fresh interpreter (``env``, ``cwd``: its environment and folder); return its JSON line
    plus its own peak RSS."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=None if cwd is None else str(cwd))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT / "tests" / "data" / "synthea_omop_1k",
                    help="folder of Synthea OMOP CSV.gz exports to replicate")
    ap.add_argument("--sizes", default="200000,1000000", help="persons per run, comma separated")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--keep", action="store_true", help="keep the scaled CDMs for a re-run")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        db = args.workdir / f"synthea_{size}.duckdb"
        if not db.exists():
            t = time.perf_counter()
            info = build_cdm(args.source, size, db)
            print(f"built {db.name}: {info['persons']:,} persons, {info['source_rows']:,} rows "
                  f"in {time.perf_counter() - t:.0f} s", flush=True)
        out = args.workdir / f"events_{size}"
        raw = args.workdir / f"raw_{size}"
        for d in (out, raw):
            shutil.rmtree(d, ignore_errors=True)
        raw.mkdir()
        ex = run_measured(EXTRACT, str(db), str(out))
        base = run_measured(RAW_COPY, str(db), str(raw))
        rows.append({"persons": size, "events": ex["events"], "extract_s": round(ex["seconds"], 2),
                     "events_per_s": round(ex["events"] / ex["seconds"]), "peak_rss_mb": round(ex["peak_rss_mb"]),
                     "raw_copy_s": round(base["seconds"], 2), "raw_rows_per_s": round(base["events"] / base["seconds"]),
                     "raw_peak_rss_mb": round(base["peak_rss_mb"]),
                     "extract_vs_raw_time": round(ex["seconds"] / base["seconds"], 2)})
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(raw, ignore_errors=True)
        if not args.keep:
            db.unlink()
    head = (f"{'persons':>10} {'events':>12} {'extract s':>10} {'events/s':>12} {'peak RSS MB':>12} "
            f"{'raw copy s':>11} {'raw rows/s':>12} {'extract/raw':>12}")
    print(head)
    for r in rows:
        print(f"{r['persons']:>10,} {r['events']:>12,} {r['extract_s']:>10} {r['events_per_s']:>12,} "
              f"{r['peak_rss_mb']:>12,} {r['raw_copy_s']:>11} {r['raw_rows_per_s']:>12,} {r['extract_vs_raw_time']:>11}x")
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "duckdb": duckdb.__version__}
    (args.workdir / "extract.json").write_text(json.dumps({"machine": machine, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()

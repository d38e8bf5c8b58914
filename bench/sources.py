"""Benchmark `extract` from a folder of CSV.gz exports (the reading layer: open + typed views), per checkout.

Scales the Synthea OMOP subset to N persons (bench/extract.py's build_cdm), writes every table as a CSV.gz
export, then runs omop_behrt.adapters.omop.extract on that folder in a fresh interpreter for each checkout
given (e.g. a worktree of the commit before a change, and this one), so two versions of the reader compare on
the same files. Prints a table and writes bench/out/sources.json.

    git worktree add /tmp/base <commit>
    python bench/sources.py --persons 5000 --checkout /tmp/base --checkout .
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from extract import build_cdm  # noqa: E402

EXTRACT = """
import sys, json, time
t = time.perf_counter()
from omop_behrt.db.database import Database
db = Database.connect(sys.argv[1]); opened = time.perf_counter() - t; db.close()
from omop_behrt.adapters import omop
t = time.perf_counter()
s = omop.extract(sys.argv[1], sys.argv[2], progress=False)
print(json.dumps({"open_s": opened, "seconds": time.perf_counter() - t, "events": s.events_out,
                  "quarantined": s.quarantined, "persons": s.persons}))
"""


def export_folder(db: Path, folder: Path, gzip: bool = True, spreadsheet: bool = False) -> None:
    """Every table of a DuckDB CDM as TABLE.csv.gz, or TABLE.csv (the shape of a site's CSV export);
    ``spreadsheet``: as a European spreadsheet saves it, ';'-separated with DD.MM.YYYY dates."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db), read_only=True)
    suffix, options = (".csv.gz", "HEADER, COMPRESSION gzip") if gzip else (".csv", "HEADER")
    if spreadsheet:
        options += ", DELIMITER ';', DATEFORMAT '%d.%m.%Y', TIMESTAMPFORMAT '%d.%m.%Y %H:%M:%S'"
    for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
        con.execute(f"COPY {table} TO '{folder / (table.upper() + suffix)}' ({options})")
    con.close()


def run(checkout: Path, folder: Path, out: Path) -> dict:
    """extract in a fresh interpreter importing omop_behrt from ``checkout``."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(checkout))
    proc = subprocess.run([sys.executable, "-c", EXTRACT, str(folder), str(out)], cwd=checkout, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"extract from {checkout} failed:\n{proc.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT / "tests" / "data" / "synthea_omop_1k")
    ap.add_argument("--persons", type=int, default=5000)
    ap.add_argument("--checkout", type=Path, action="append", help="a checkout to import omop_behrt from "
                    "(repeatable; default: this one)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per checkout (the best is reported)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = args.workdir / f"sources_{args.persons}"
    if not folder.exists():
        db = args.workdir / f"sources_{args.persons}.duckdb"
        t = time.perf_counter()
        build_cdm(args.source, args.persons, db)
        export_folder(db, folder)
        db.unlink()
        print(f"built {folder.name} in {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for c in checkouts:
        best = min((run(c, folder, args.workdir / "sources_events") for _ in range(args.repeat)),
                   key=lambda r: r["seconds"])
        rows.append({"checkout": str(c), "persons": best["persons"], "events": best["events"],
                     "open_s": round(best["open_s"], 2), "extract_s": round(best["seconds"], 2),
                     "events_per_s": round(best["events"] / best["seconds"])})
    print(f"{'checkout':<30} {'persons':>8} {'events':>10} {'open s':>7} {'extract s':>10} {'events/s':>10}")
    for r in rows:
        print(f"{r['checkout'][-30:]:<30} {r['persons']:>8,} {r['events']:>10,} {r['open_s']:>7.2f} "
              f"{r['extract_s']:>10.2f} {r['events_per_s']:>10,}")
    if len(rows) > 1:
        print(f"extract time, last / first: {rows[-1]['extract_s'] / rows[0]['extract_s']:.2f}")
    (args.workdir / "sources.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

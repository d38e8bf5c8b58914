"""`extract` of two revisions of this repository, alternately on the same data: what a change costs or gains.

Each revision runs from its own git worktree in a fresh interpreter (PYTHONPATH set to that tree), so both use
this venv's libraries and only our code differs. Two sources: the Synthea subset replicated into a DuckDB CDM
(typed columns, bench/extract.py's builder) and a CSV export folder of the same persons (text read and typed by
the DDL, where number and date parsing runs). Prints a table with medians and min-max, writes JSON.

    python bench/revisions.py --base 4877f4e                 # HEAD against 4877f4e, 100k persons, 3 rounds
    python bench/revisions.py --base HEAD~3 --persons 20000 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import EXTRACT, build_cdm  # noqa: E402  (bench/extract.py: the scaled CDM and the timed snippet)

ROOT = Path(__file__).resolve().parents[1]


def worktree(rev: str, where: Path) -> Path:
    """A detached worktree of ``rev`` at ``where`` (``HEAD`` and the working tree: this checkout itself)."""
    if rev == "WORKTREE":
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), rev], check=True,
                   capture_output=True)
    return where


def export_csv(db: Path, folder: Path) -> None:
    """Every table of the DuckDB CDM as TABLE.csv (what a site's export tool writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db), read_only=True)
    for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
        con.execute(f"COPY {t} TO '{folder / (t.upper() + '.csv')}' (HEADER, DELIMITER ',')")
    con.close()


def run(tree: Path, source: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen([sys.executable, "-c", EXTRACT, str(source), str(out)], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=str(tree))
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"extract from {tree} failed")
    r = json.loads(text.strip().splitlines()[-1])
    r["peak_rss_mb"] = usage.ru_maxrss / 1024
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the revision to compare with (a commit, tag or HEAD~N)")
    ap.add_argument("--new", default="WORKTREE", help="the other side (default: this checkout as it is)")
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--source", type=Path, default=ROOT / "tests" / "data" / "synthea_omop_1k")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/revisions_<UTC>.json)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="omop-behrt-revisions-"))
    trees = {"base": worktree(args.base, work / "base"), "new": worktree(args.new, work / "new")}
    db = work / "cdm.duckdb"
    built = build_cdm(args.source, args.persons, db)
    export_csv(db, work / "csv")
    sources = {"duckdb": db, "csv export": work / "csv"}
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        for r in range(args.rounds):
            for name, src in sources.items():
                for side in (("base", "new") if r % 2 == 0 else ("new", "base")):     # alternate who goes first
                    got = run(trees[side], src, work / f"out-{side}")
                    rows.setdefault((name, side), []).append(got)
                    print(f"round {r + 1} {name:10s} {side:4s} {got['seconds']:7.2f} s  {got['events']:,} events",
                          flush=True)
    finally:
        for side in ("base", "new"):
            if trees[side] != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[side])],
                               capture_output=True)
    table = []
    print(f"\n{built['persons']:,} persons, {built['source_rows']:,} source rows; load {os.getloadavg()[0]:.2f}")
    print(f"{'source':12s} {'base s (min-max)':>22s} {'new s (min-max)':>22s} {'new/base':>9s} {'events':>12s}")
    for name in sources:
        b, n = rows[(name, "base")], rows[(name, "new")]
        mb, mn = statistics.median(x["seconds"] for x in b), statistics.median(x["seconds"] for x in n)
        same = b[0]["events"] == n[0]["events"] and b[0]["quarantined"] == n[0]["quarantined"]
        table.append({"source": name, "base_median_s": mb, "new_median_s": mn, "ratio_new_over_base": mn / mb,
                      "base": b, "new": n, "same_counts": same})
        span = lambda xs: f"{min(x['seconds'] for x in xs):.1f}-{max(x['seconds'] for x in xs):.1f}"  # noqa: E731
        print(f"{name:12s} {mb:8.2f} ({span(b):>11s}) {mn:8.2f} ({span(n):>11s}) {mn / mb:8.2f}x "
              f"{n[0]['events']:>12,}{'' if same else '  (counts differ)'}")
    out = args.out or ROOT / "bench" / "results" / f"revisions_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": args.base, "new": args.new, "cdm": built, "rounds": args.rounds,
                               "load": os.getloadavg(), "rows": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

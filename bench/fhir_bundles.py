"""FHIR extract on whole Synthea R4 transaction bundles, next to the ceiling of only parsing the same bytes.

    python bench/fhir_bundles.py [--copies 120] [--rounds 3] [--workers 2] [--baseline REF] [--one-worker]
                                 [--keep DIR]

Replicates the 5 real Synthea bundles of ``../shared/data/fhir_r4_bundles_5`` ``--copies`` times with new ids
(every UUID, ids and references alike, gets a copy suffix: new patients, no duplicates), then times, each in its
own process and in alternated rounds (medians reported):

* extract      ``omop_behrt.adapters.fhir.extract`` end to end with ``--workers`` processes (this checkout)
* extract@REF  the same with ``adapters/`` as it was at git ``--baseline`` (the before figure, same run)
* (1 worker)   with ``--one-worker``: both again in one process, whose CPU time has no pool in it
* orjson       the parse ceiling: read each file and ``orjson.loads`` it whole, 1 and 2 processes
* partial      msgspec reads the entries as raw bytes, the resourceType is peeked, and only the resources of
               types with a view (and Patient) are parsed with orjson: 1 and 2 processes (what extract's reader
               does with msgspec installed for NDJSON and for Bundles over 64 MB; smaller Bundles are parsed
               whole, as ``orjson`` does)

With ``--baseline`` the two extracts' outputs are compared (events, persons, observation periods, quarantine,
codes: the same rows, in any shard order; the summary but for its seconds and source): a difference fails the run.

Prints a table; writes bench/results/fhir_bundles.json (MB/s, resources/s, CPU-s, load average, ratios). On a
shared machine the medians move with the load: the minimum wall and CPU seconds of the rounds are kept as well.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "fhir_r4_bundles_5"
UUID = re.compile(rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def replicate(src: Path, dst: Path, copies: int) -> int:
    """``copies`` copies of the bundles in ``src`` under ``dst``, every UUID suffixed ``-c<k>``; bytes written."""
    bundles = [(p.name, p.read_bytes()) for p in sorted(src.glob("*.json"))]
    dst.mkdir(parents=True)
    size = 0
    for k in range(copies):
        suffix = b"\\1-c%d" % k
        for name, data in bundles:
            out = UUID.sub(suffix, data)
            (dst / f"c{k:04d}-{name}").write_bytes(out)
            size += len(out)
    return size


# each measurement runs in a fresh interpreter: `python bench/fhir_bundles.py --child KIND ARG...`; it prints one
# JSON line {"wall": s, "cpu": s (self + children, the timed work only), "resources": n}
def _child_extract(src: str, out: str, workers: str, adapters: str) -> dict:
    if adapters:                   # the baseline: omop_behrt.adapters loaded from an older copy of adapters/
        import types
        import omop_behrt
        mod = types.ModuleType("omop_behrt.adapters")
        mod.__path__ = [adapters]
        sys.modules["omop_behrt.adapters"] = mod
        omop_behrt.adapters = mod
    import importlib
    fhir = importlib.import_module("omop_behrt.adapters.fhir")
    cpu0, t0 = _cpu(), time.perf_counter()
    s = fhir.extract(src, out, progress=False, workers=int(workers))
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - cpu0, "resources": s.resources_read,
            "events": s.events_out, "persons": s.persons, "quarantined": s.quarantined,
            "ignored": sum(s.ignored_by_type.values())}


def _parse_files(args: tuple) -> int:
    kind, files, wanted = args
    import orjson
    n = 0
    if kind == "orjson":
        for f in files:
            n += len(orjson.loads(Path(f).read_bytes()).get("entry") or ())
        return n
    import msgspec
    entry = msgspec.defstruct("Entry", [("resource", msgspec.Raw, msgspec.Raw(b"null")),
                                        ("fullUrl", str | None, None)])
    dec = msgspec.json.Decoder(msgspec.defstruct("Bundle", [("resourceType", str), ("entry", list[entry], [])]))
    peek = re.compile(rb'\s*\{\s*"resourceType"\s*:\s*"([A-Za-z]+)"')
    for f in files:
        for e in dec.decode(Path(f).read_bytes()).entry:
            raw = memoryview(e.resource)
            m = peek.match(raw[:100])
            if m is None or m.group(1).decode() in wanted:
                orjson.loads(raw)
            n += 1
    return n


def _child_parse(src: str, kind: str, procs: str) -> dict:
    import multiprocessing
    files = sorted(str(f) for f in Path(src).glob("*.json"))
    k = int(procs)
    wanted: set[str] = set()
    if kind == "partial":          # the types extract parses: those with a view, and Patient
        from omop_behrt.adapters.fhir_views import load_fhir_views
        wanted = {v.resource for v in load_fhir_views().values()} | {"Patient"}
    chunks = [(kind, files[i::k * 8], wanted) for i in range(k * 8)]
    cpu0, t0 = _cpu(), time.perf_counter()
    if k == 1:
        n = sum(map(_parse_files, chunks))
    else:
        pool = multiprocessing.get_context("fork").Pool(k)
        n = sum(pool.map(_parse_files, chunks, chunksize=1))
        pool.close()
        pool.join()                # reaped: their CPU time is counted
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - cpu0, "resources": n}


def _cpu() -> float:
    import resource
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _run_child(*args: str, script: str = __file__) -> dict:
    load = os.getloadavg()[0]
    p = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True,
                       cwd=str(ROOT))
    if p.returncode:
        raise RuntimeError(f"{args}: {p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["load_1min_before"] = round(load, 2)
    return r


def _rows(folder: Path, pattern: str) -> "pyarrow.Table | None":  # noqa: F821 (imported inside)
    """The rows of the Parquet files ``pattern`` under ``folder``, sorted by every column (None: no such file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    files = sorted(folder.glob(pattern))
    if not files:
        return None
    t = pa.concat_tables([pq.read_table(f) for f in files])
    return t.sort_by([(c, "ascending") for c in t.column_names])


def output_differences(a: Path, b: Path) -> list[str]:
    """What differs between two extract outputs (empty: the same rows and summary); shard layout is ignored."""
    diffs = []
    for pattern in ("events/*.parquet", "persons.parquet", "observation_periods.parquet", "quarantine*.parquet",
                    "codes.parquet"):
        x, y = _rows(a, pattern), _rows(b, pattern)
        if (x is None) != (y is None) or (x is not None and not x.equals(y)):
            diffs.append(f"{pattern}: {None if x is None else x.num_rows} vs {None if y is None else y.num_rows} "
                         f"rows, not equal")
    sa, sb = (json.loads((d / "manifest.json").read_text())["summary"] for d in (a, b))
    for k in sorted((set(sa) | set(sb)) - {"seconds", "source"}):
        if sa.get(k) != sb.get(k):
            diffs.append(f"summary {k}: {sa.get(k)!r} vs {sb.get(k)!r}")
    return diffs


def _baseline_adapters(ref: str, dst: Path) -> Path:
    """adapters/*.py as they were at git ``ref``, in ``dst``."""
    names = subprocess.run(["git", "ls-tree", "--name-only", ref, "adapters/"], capture_output=True, text=True,
                           check=True, cwd=ROOT).stdout.split()
    dst.mkdir(parents=True)
    for n in names:
        if n.endswith(".py"):
            body = subprocess.run(["git", "show", f"{ref}:{n}"], capture_output=True, check=True, cwd=ROOT).stdout
            (dst / Path(n).name).write_bytes(body)
    return dst


def summarise(runs: dict[str, list[dict]], size: int) -> dict[str, dict]:
    """Each variant's medians (and minima) over its rounds: wall and CPU seconds, MB/s, resources/s and per CPU-s."""
    results = {}
    for name, rs in runs.items():
        wall = statistics.median(x["wall"] for x in rs)
        cpu = statistics.median(x["cpu"] for x in rs)
        n = rs[0]["resources"]
        results[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "resources": n,
                         "wall_min_s": round(min(x["wall"] for x in rs), 3),
                         "cpu_min_s": round(min(x["cpu"] for x in rs), 3),
                         "resources_per_s": round(n / wall), "mb_per_s": round(size / 1e6 / wall, 1),
                         "resources_per_cpu_s": round(n / cpu), "walls": [round(x["wall"], 3) for x in rs],
                         "cpus": [round(x["cpu"], 3) for x in rs],
                         "load_1min_before": [x["load_1min_before"] for x in rs],
                         **{k: rs[0][k] for k in ("events", "persons", "quarantined", "ignored") if k in rs[0]}}
    return results


def print_table(results: dict[str, dict], ratios: dict[str, float]) -> None:
    width = max(map(len, results))
    print(f"{'':<{width}}  {'wall s':>7} {'MB/s':>7} {'res/s':>9} {'CPU s':>7} {'res/CPU-s':>9} "
          f"{'min wall':>8} {'min CPU':>8}")
    for name, x in results.items():
        print(f"{name:<{width}}  {x['wall_s']:>7.2f} {x['mb_per_s']:>7.1f} {x['resources_per_s']:>9,} "
              f"{x['cpu_s']:>7.2f} {x['resources_per_cpu_s']:>9,} {x['wall_min_s']:>8.2f} {x['cpu_min_s']:>8.2f}")
    print("ratios: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        r = _child_extract(*argv[2:]) if argv[1] == "extract" else _child_parse(*argv[2:])
        print(json.dumps(r))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=120, help="copies of the 5 bundles (120: 600 bundles)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", help="git ref whose adapters/ give the 'before' extract figure (same run)")
    ap.add_argument("--one-worker", action="store_true",
                    help="also extract in one process (this checkout and --baseline): CPU time without the pool")
    ap.add_argument("--source", default=str(SOURCE))
    ap.add_argument("--keep", help="build the replicated input here and keep it")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fhir_bundles.json"))
    args = ap.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fhir-bundles-"))
    try:
        src = work / f"input-{args.copies}"
        if not src.exists():
            t0 = time.perf_counter()
            replicate(Path(args.source), src, args.copies)
            print(f"replicated {args.copies * 5} bundles in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        size = sum(f.stat().st_size for f in src.glob("*.json"))
        w = str(args.workers)
        variants = {f"extract ({w} workers)": ("extract", str(src), str(work / "events"), w, "")}
        if args.baseline:
            base = work / "baseline-adapters"
            shutil.rmtree(base, ignore_errors=True)
            _baseline_adapters(args.baseline, base)
            variants[f"extract@{args.baseline} ({w} workers)"] = ("extract", str(src), str(work / "events-b"), w,
                                                                  str(base))
        if args.one_worker:
            for name, v in list(variants.items()):
                variants[name.replace(f"({w} workers)", "(1 worker)")] = v[:2] + (v[2] + "-1", "1") + v[4:]
        for k in ("1", "2"):
            variants[f"orjson parse ({k} proc)"] = ("parse", str(src), "orjson", k)
        try:
            import msgspec  # noqa: F401
            for k in ("1", "2"):
                variants[f"partial parse ({k} proc)"] = ("parse", str(src), "partial", k)
        except ImportError:
            print("msgspec not installed: no partial-decoder ceiling", file=sys.stderr)
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                runs[name].append(_run_child(*variants[name]))
                print(f"round {r + 1} {name}: {runs[name][-1]['wall']:.2f} s", file=sys.stderr)
        if args.baseline:            # the last round's outputs of this checkout and of the baseline
            diffs = output_differences(work / "events", work / "events-b")
            if args.one_worker:
                diffs += output_differences(work / "events-1", work / "events-b-1")
            if diffs:
                raise SystemExit("outputs differ from --baseline's:\n  " + "\n  ".join(diffs))
            print(f"outputs identical to {args.baseline}'s", file=sys.stderr)
        results = summarise(runs, size)
        ours = results[f"extract ({w} workers)"]
        ceiling = results["orjson parse (2 proc)"]
        ratios = {"orjson_2proc_over_extract": round(ceiling["resources_per_s"] / ours["resources_per_s"], 2)}
        if "partial parse (2 proc)" in results:
            ratios["partial_2proc_over_extract"] = round(results["partial parse (2 proc)"]["resources_per_s"]
                                                         / ours["resources_per_s"], 2)
        if args.baseline:
            before = results[f"extract@{args.baseline} ({w} workers)"]
            ratios["extract_over_baseline"] = round(ours["resources_per_s"] / before["resources_per_s"], 2)
            ratios["extract_over_baseline_cpu"] = round(before["cpu_s"] / ours["cpu_s"], 2)
            if args.one_worker:
                one, one_before = results["extract (1 worker)"], results[f"extract@{args.baseline} (1 worker)"]
                ratios["extract_over_baseline_1_worker_cpu"] = round(one_before["cpu_s"] / one["cpu_s"], 2)
                ratios["orjson_1proc_over_extract_1_worker_cpu"] = round(
                    results["orjson parse (1 proc)"]["resources_per_cpu_s"] / one["resources_per_cpu_s"], 2)
        out = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
                          f"{platform.python_version()}",
               "input": {"bundles": args.copies * 5, "bytes": size, "resources": ours["resources"],
                         "source": "5 Synthea R4 transaction bundles (smart-on-fhir/generated-sample-data) x "
                                   f"{args.copies}, ids rewritten"},
               "rounds": args.rounds, "workers": args.workers, "baseline": args.baseline,
               "load_average_end": [round(x, 2) for x in os.getloadavg()], "results": results, "ratios": ratios}
        print(f"{size / 1e6:.0f} MB, {ours['resources']:,} resources in {args.copies * 5} bundles; medians of "
              f"{args.rounds} alternated rounds; load average now {os.getloadavg()[0]:.1f}")
        print_table(results, ratios)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""FHIR bulk-export NDJSON as servers write it (one large file per type, or one file for everything), next to the
ceiling of only parsing the same lines.

    python bench/fhir_bulk.py [--copies 40] [--layout per-type|one-file] [--rounds 3] [--workers 2]
                              [--baseline REF] [--keep DIR]

Replicates the Synthea bulk export of ``../shared/data/fhir_bulk_ndjson_10`` (10 patients, plain NDJSON)
``--copies`` times with new ids (every UUID gets a copy suffix), each type into one plain ``<Type>.ndjson``
(``per-type``, as Synthea and single-file exporters write it) or everything into one ``export.ndjson``
(``one-file``). Then times, each in a fresh process, alternated rounds (medians):

* extract      ``omop_behrt.adapters.fhir.extract`` with ``--workers`` processes (this checkout)
* extract@REF  the same with ``adapters/`` as it was at git ``--baseline`` (the same run's before figure); the two
               outputs are compared (bench/fhir_bundles.py's check) and a difference fails the run
* orjson       the parse ceiling: ``orjson.loads`` of every line, in 1 process and in 2 (each reading half of
               every file's lines, cut as extract cuts them)

Prints a table; writes bench/results/fhir_bulk.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fhir_bundles import (ROOT, _baseline_adapters, _cpu, _run_child, output_differences,  # noqa: E402
                          print_table, summarise)

SOURCE = ROOT.parent / "shared" / "data" / "fhir_bulk_ndjson_10"
UUID = re.compile(rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def replicate(src: Path, dst: Path, copies: int, layout: str) -> int:
    """The bulk export ``copies`` times, every UUID suffixed ``-c<k>``, into ``dst``; bytes written."""
    files = sorted(src.glob("*.ndjson"), key=lambda f: (not f.name.startswith("Patient"), f.name))
    files = [f for f in files if f.name != "log.ndjson"]
    dst.mkdir(parents=True)
    size = 0
    one = open(dst / "export.ndjson", "wb") if layout == "one-file" else None
    try:
        for f in files:
            data = f.read_bytes()
            if not data.endswith(b"\n"):
                data += b"\n"
            out = one or open(dst / f"{f.name.split('.')[0]}.ndjson", "wb")
            for k in range(copies):
                size += out.write(UUID.sub(b"\\1-c%d" % k, data))
            if one is None:
                out.close()
    finally:
        if one is not None:
            one.close()
    return size


def _parse_range(args: tuple) -> int:
    path, start, end = args
    import orjson
    n = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        for line in f:
            if left <= 0:
                break
            left -= len(line)
            if line.strip():
                orjson.loads(line)
                n += 1
    return n


def _child_parse(src: str, procs: str) -> dict:
    import multiprocessing
    from omop_behrt.adapters.fhir_reader import ndjson_pieces
    k = int(procs)
    jobs = []
    for f in sorted(Path(src).glob("*.ndjson")):
        size = f.stat().st_size
        jobs += [(str(f), s, e) for s, e, _ in (ndjson_pieces(f, -(-size // (4 * k))) if k > 1 else [(0, size, 1)])]
    cpu0, t0 = _cpu(), time.perf_counter()
    if k == 1:
        n = sum(map(_parse_range, jobs))
    else:
        pool = multiprocessing.get_context("fork").Pool(k)
        n = sum(pool.map(_parse_range, jobs, chunksize=1))
        pool.close()
        pool.join()
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - cpu0, "resources": n}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--child", "extract"]:
        from fhir_bundles import _child_extract
        print(json.dumps(_child_extract(*argv[2:])))
        return 0
    if argv[:2] == ["--child", "parse"]:
        print(json.dumps(_child_parse(*argv[2:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--layout", choices=["per-type", "one-file"], default="per-type")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", help="git ref whose adapters/ give the 'before' extract figure (same run)")
    ap.add_argument("--source", default=str(SOURCE))
    ap.add_argument("--keep", help="build the replicated input here and keep it")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fhir_bulk.json"))
    args = ap.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fhir-bulk-"))
    try:
        src = work / f"input-{args.layout}-{args.copies}"
        if not src.exists():
            replicate(Path(args.source), src, args.copies, args.layout)
        files = sorted(src.glob("*.ndjson"))
        size = sum(f.stat().st_size for f in files)
        w = str(args.workers)
        me = str(Path(__file__).resolve())
        variants = {f"extract ({w} workers)": ("extract", str(src), str(work / "events"), w, "")}
        if args.baseline:
            base = work / "baseline-adapters"
            shutil.rmtree(base, ignore_errors=True)
            _baseline_adapters(args.baseline, base)
            variants[f"extract@{args.baseline} ({w} workers)"] = ("extract", str(src), str(work / "events-b"), w,
                                                                  str(base))
        for k in ("1", "2"):
            variants[f"orjson parse ({k} proc)"] = ("parse", str(src), k)
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        for r in range(args.rounds):
            for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                runs[name].append(_run_child(*variants[name], script=me))
                print(f"round {r + 1} {name}: {runs[name][-1]['wall']:.2f} s", file=sys.stderr)
        if args.baseline:
            diffs = output_differences(work / "events", work / "events-b")
            if diffs:
                raise SystemExit("outputs differ from --baseline's:\n  " + "\n  ".join(diffs))
            print(f"outputs identical to {args.baseline}'s", file=sys.stderr)
        results = summarise(runs, size)
        ours = results[f"extract ({w} workers)"]
        ratios = {"orjson_2proc_over_extract": round(results["orjson parse (2 proc)"]["resources_per_s"]
                                                     / ours["resources_per_s"], 2)}
        if args.baseline:
            before = results[f"extract@{args.baseline} ({w} workers)"]
            ratios["extract_over_baseline"] = round(ours["resources_per_s"] / before["resources_per_s"], 2)
            ratios["extract_over_baseline_cpu"] = round(before["cpu_s"] / ours["cpu_s"], 2)
        out = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
                          f"{platform.python_version()}",
               "input": {"layout": args.layout, "copies": args.copies, "files": len(files), "bytes": size,
                         "largest_file_bytes": max(f.stat().st_size for f in files),
                         "source": "Synthea bulk export of 10 patients (fhir_bulk_ndjson_10), ids rewritten"},
               "rounds": args.rounds, "workers": args.workers, "baseline": args.baseline,
               "load_average_end": [round(x, 2) for x in os.getloadavg()], "results": results, "ratios": ratios}
        print(f"{size / 1e6:.0f} MB in {len(files)} files ({args.layout}, largest "
              f"{out['input']['largest_file_bytes'] / 1e6:.0f} MB); medians of {args.rounds} alternated rounds; "
              f"load average now {os.getloadavg()[0]:.1f}")
        print_table(results, ratios)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where one FHIR part's CPU goes beyond the parse: per-phase CPU seconds of ``Part.run`` on replicated bundles.

    python bench/fhir_phases.py [--copies 60] [--rounds 5] [--keep DIR]

Replicates the 5 Synthea bundles (bench/fhir_bundles.py) and times, in this one process, the minimum CPU seconds
over ``--rounds`` rounds (phases alternated) of:

* read bytes        reading the files
* msgspec decode    reading + the Bundle skim's msgspec pass (entries as raw bytes)
* read_bundle, skim   reading + skim + orjson of the wanted resources + Items
* read_bundle, whole  reading + orjson of the whole Bundle + Items (what a part reads)
* orjson whole      reading + orjson.loads of every file whole (the parse ceiling of bench/fhir_bundles.py)
* views             the generated view functions on the already parsed resources (warm)
* part              ``Part.run`` over all files as one part (no pool, no finish)
* part, no flush    the same with ``_flush`` a no-op: rows -> Arrow -> Parquet is the difference
* part, no event    also ``_event`` a no-op: the views + reference resolution + buffering is the difference
* part, no items    also ``_items`` a no-op: what is left is reading and the part's fixed writes

Prints a table (seconds and us per resource) and writes bench/results/fhir_phases.json with the load average.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fhir_bundles import ROOT, SOURCE, replicate  # noqa: E402

from omop_behrt.adapters import fhir_reader  # noqa: E402
from omop_behrt.adapters.fhir_part import Part  # noqa: E402


def phases(files: list[str], work: Path) -> dict:
    """name -> a function timing one round of that phase."""
    out = work / "out"

    def fresh() -> Part:
        shutil.rmtree(out, ignore_errors=True)
        (out / ".fhir").mkdir(parents=True)
        return Part(0, files, str(out), None, False, set())
    wanted = fresh().wanted
    paths = [Path(f) for f in files]
    parsed = [it.resource for p in paths for it in fhir_reader.read_bundle(p, wanted)[1] if it.resource is not None]

    def views() -> None:
        rows = fresh().type_rows
        for r in parsed:
            f = rows.get(r["resourceType"])
            if f is not None:
                f(r)

    def part(*off: str) -> None:
        p = fresh()
        for name in off:
            setattr(p, name, (lambda *a: None))
        p.run()
    def each(fn: Callable) -> Callable:           # one file at a time, its result dropped (as a part does)
        def run() -> None:
            for p in paths:
                fn(p)
        return run
    return {"read bytes": each(lambda p: p.read_bytes()),
            "msgspec decode": each(lambda p: fhir_reader._BUNDLE.decode(p.read_bytes())),
            "read_bundle, skim": each(lambda p: fhir_reader.read_bundle(p, wanted)),
            "read_bundle, whole": each(lambda p: fhir_reader.read_bundle(p)),
            "orjson whole": each(lambda p: orjson.loads(p.read_bytes())),
            "views": views,
            "part": part,
            "part, no flush": lambda: part("_flush"),
            "part, no event": lambda: part("_flush", "_event"),
            "part, no items": lambda: part("_flush", "_items")}, len(parsed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--source", default=str(SOURCE))
    ap.add_argument("--keep", help="build the replicated input here and keep it")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fhir_phases.json"))
    args = ap.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fhir-phases-"))
    try:
        src = work / f"input-{args.copies}"
        if not src.exists():
            replicate(Path(args.source), src, args.copies)
        files = sorted(str(f) for f in src.glob("*.json"))
        fns, n_parsed = phases(files, work)
        n_all = sum(len(fhir_reader.read_bundle(Path(f), None)[1]) for f in files)
        gc.collect()
        gc.freeze()                 # the parsed resources kept for "views" are not traversed by the collector
        cpu: dict[str, list[float]] = {k: [] for k in fns}
        load = [os.getloadavg()[0]]
        for r in range(args.rounds):
            for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                t = time.process_time()
                fns[name]()
                cpu[name].append(time.process_time() - t)
            load.append(os.getloadavg()[0])
        best = {k: min(v) for k, v in cpu.items()}
        derived = {"rows -> Arrow -> Parquet (part - no flush)": best["part"] - best["part, no flush"],
                   "views + references + buffer (no flush - no event)":
                       best["part, no flush"] - best["part, no event"],
                   "items loop (no event - no items)": best["part, no event"] - best["part, no items"],
                   "Items beyond the parse (read_bundle, whole - orjson whole)":
                       best["read_bundle, whole"] - best["orjson whole"]}
        print(f"{len(files)} bundles, {n_all:,} resources ({n_parsed:,} parsed); min CPU of {args.rounds} rounds; "
              f"load average {min(load):.1f}-{max(load):.1f}")
        for name, s in list(best.items()) + list(derived.items()):
            print(f"  {name:<52} {s:7.3f} s  {s / n_all * 1e6:6.1f} us/resource")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "input": {"bundles": len(files), "resources": n_all, "parsed": n_parsed, "copies": args.copies},
            "rounds": args.rounds, "load_average": [round(x, 2) for x in load],
            "cpu_s_min": {k: round(v, 4) for k, v in best.items()},
            "derived_s": {k: round(v, 4) for k, v in derived.items()},
            "cpu_s_all": {k: [round(x, 4) for x in v] for k, v in cpu.items()}}, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

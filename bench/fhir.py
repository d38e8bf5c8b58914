"""FHIR extract throughput: the test fixtures replicated to >= 1M resources, end to end, next to fhir.resources.

    python bench/fhir.py [--copies 160] [--workers 2] [--sample 3000] [--keep DIR]

Each copy rewrites every UUID (ids and references alike) with a copy suffix, so copies are new patients, and is
written as plain files: the 5 Bundles as 5 Bundle files, the NDJSON set as one file per type. Prints a table and
writes bench/out/fhir.json (resources/s, peak RSS of the run and its worker processes, the fhir.resources R4B
validated parse rate on a sample of the same resources, and the ratio).
"""
from __future__ import annotations

import argparse
import gzip
import json
import platform
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# this file is named fhir.py: keep its folder off sys.path so that ``import fhir.resources`` finds the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import orjson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "fhir"
UUID = re.compile(rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def replicate(dst: Path, copies: int) -> int:
    """Write ``copies`` copies of the fixtures under ``dst``; return the number of resources written."""
    bundles = [(p.name[:-3], gzip.decompress(p.read_bytes())) for p in sorted((FIXTURES / "bundles").glob("*.json.gz"))]
    ndjson = [(p.name[:-3], gzip.decompress(p.read_bytes())) for p in sorted((FIXTURES / "ndjson").glob("*.ndjson.gz"))
              if not p.name.startswith("log")]
    per_copy = sum(len(orjson.loads(b)["entry"]) for _, b in bundles) + sum(b.count(b"\n") for _, b in ndjson)
    (dst / "bundles").mkdir(parents=True)
    (dst / "ndjson").mkdir()
    for k in range(copies):
        suffix = b"\\1-c%d" % k
        for name, data in bundles:
            (dst / "bundles" / f"c{k:04d}-{name}").write_bytes(UUID.sub(suffix, data))
        for name, data in ndjson:
            kind = name.split(".")[0]
            (dst / "ndjson" / f"{kind}.{k:04d}.ndjson").write_bytes(UUID.sub(suffix, data))
    return per_copy * copies


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children (the extract workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def validated_rate(sample: int) -> tuple[float, float, int]:
    """Resources per second and per CPU-second for orjson + fhir.resources R4B model_validate on a sample."""
    from fhir.resources.R4B import get_fhir_model_class
    lines: list[bytes] = []
    for p in sorted((FIXTURES / "ndjson").glob("*.ndjson.gz")):
        if not p.name.startswith("log"):
            lines += gzip.decompress(p.read_bytes()).splitlines()
    for p in sorted((FIXTURES / "bundles").glob("*.json.gz")):
        lines += [orjson.dumps(e["resource"]) for e in orjson.loads(gzip.decompress(p.read_bytes()))["entry"]]
    step = max(1, len(lines) // sample)
    chosen = lines[::step][:sample]
    t0, c0 = time.perf_counter(), time.process_time()
    invalid = 0
    for line in chosen:
        r = orjson.loads(line)
        try:
            get_fhir_model_class(r["resourceType"]).model_validate(r)
        except Exception:   # noqa: BLE001 - counting, not handling
            invalid += 1
    return len(chosen) / (time.perf_counter() - t0), len(chosen) / (time.process_time() - c0), invalid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=160)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", type=int, default=3000)
    ap.add_argument("--keep", help="build the replicated input here and keep it")
    args = ap.parse_args(argv)
    from omop_behrt.adapters import fhir

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fhir-bench-"))
    try:
        src = work / "input"
        if not src.exists():
            t0 = time.perf_counter()
            n = replicate(src, args.copies)
            print(f"replicated {n:,} resources in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
        out = work / "events"
        cpu0 = _cpu()
        t0 = time.perf_counter()
        summary = fhir.extract(src, out, progress=False, workers=args.workers)
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ours = summary.resources_read / wall
        theirs, theirs_cpu, invalid = validated_rate(args.sample)
        ours_cpu = summary.resources_read / cpu
        result = {
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{__import__('os').cpu_count()} cores",
            "copies": args.copies, "workers": args.workers, "input_bytes": size,
            "resources": summary.resources_read, "events": summary.events_out, "persons": summary.persons,
            "quarantined": summary.quarantined, "seconds": round(wall, 2), "resources_per_s": round(ours),
            "cpu_seconds": round(cpu, 2), "resources_per_cpu_s": round(ours_cpu),
            "load_average_1min": round(__import__("os").getloadavg()[0], 2),
            "peak_rss_mb_main": round(rss_self), "peak_rss_mb_worker": round(rss_children),
            "fhir_resources_validated_per_s": round(theirs), "fhir_resources_validated_per_cpu_s": round(theirs_cpu),
            "validated_sample": args.sample, "validated_sample_invalid": invalid,
            "ratio_wall": round(ours / theirs, 1), "ratio_cpu": round(ours_cpu / theirs_cpu, 1)}
        rows = [("input", f"{summary.resources_read:,} resources, {size / 1e6:,.0f} MB, {summary.files:,} files"),
                ("extract (end to end)", f"{wall:.1f} s, {ours:,.0f} resources/s, {args.workers} workers"),
                ("CPU time", f"{cpu:.1f} s in all processes: {summary.resources_read / cpu:,.0f} resources per "
                             f"CPU-second (load average {__import__('os').getloadavg()[0]:.1f})"),
                ("events written", f"{summary.events_out:,} ({summary.persons:,} persons)"),
                ("peak RSS", f"main {rss_self:,.0f} MB, largest worker {rss_children:,.0f} MB"),
                ("fhir.resources R4B validated", f"{theirs:,.0f} resources/s, {theirs_cpu:,.0f} per CPU-second "
                                                 f"(sample {args.sample:,}, one process)"),
                ("ratio", f"{ours / theirs:.1f}x wall-clock ({args.workers} workers vs 1), "
                          f"{ours_cpu / theirs_cpu:.1f}x per CPU-second")]
        w = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
        (ROOT / "bench" / "out").mkdir(exist_ok=True)
        (ROOT / "bench" / "out" / "fhir.json").write_text(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

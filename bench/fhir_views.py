"""The views alone: CPU per resource of the closure tree, one generated function per view, one per resource type.

    python bench/fhir_views.py [--bundles 25] [--rounds 7]

Parses the first ``--bundles`` of the real Synthea bundles (../shared/data/fhir_r4_bundles_5, repeated if fewer)
once, keeps the resources of types with a view, and times in alternated rounds (CPU seconds, medians):
``closures`` (View.closure_rows per view, the path before adapters/view_codegen.py), ``generated per view``
(View.rows), ``generated per type`` (what extract runs: one function for all the views of a type). Prints a
table; writes bench/results/fhir_views.json with the ratios and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import orjson

from omop_behrt.adapters.fhir_views import _combined, load_fhir_views

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "fhir_r4_bundles_5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--source", default=str(SOURCE))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fhir_views.json"))
    a = ap.parse_args()
    by_type: dict[str, list] = {}
    for v in load_fhir_views().values():
        if v.name != "patient":
            by_type.setdefault(v.resource, []).append(v)
    files = sorted(Path(a.source).glob("*.json"))
    res = [e["resource"] for i in range(a.bundles) for e in orjson.loads(files[i % len(files)].read_bytes())["entry"]]
    res = [r for r in res if r.get("resourceType") in by_type]
    per_type = {t: _combined(vs) for t, vs in by_type.items()}

    def closures():
        for r in res:
            for v in by_type[r["resourceType"]]:
                v.closure_rows(r)

    def per_view():
        for r in res:
            for v in by_type[r["resourceType"]]:
                v.rows(r)

    def combined():
        for r in res:
            per_type[r["resourceType"]](r)
    kinds = {"closures": closures, "generated per view": per_view, "generated per type": combined}
    for fn in kinds.values():            # warm up (and generate the per-view functions)
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(a.rounds):
        for k, fn in kinds.items():
            t = time.process_time()
            fn()
            cpu[k].append(time.process_time() - t)
    n = len(res)
    out = {"resources": n, "by_type": dict(Counter(r["resourceType"] for r in res).most_common()),
           "rounds": a.rounds, "load_average_end": [round(x, 2) for x in os.getloadavg()], "results": {}}
    print(f"{n:,} resources of types with a view ({a.bundles} bundles); medians of {a.rounds} rounds; "
          f"load average {out['load_average_end']}")
    print(f"{'':22s} {'us/resource CPU':>16s} {'min':>8s}")
    for k, v in cpu.items():
        med, low = statistics.median(v) / n * 1e6, min(v) / n * 1e6
        out["results"][k] = {"us_per_resource_cpu": round(med, 2), "us_per_resource_cpu_min": round(low, 2)}
        print(f"{k:22s} {med:16.2f} {low:8.2f}")
    base = out["results"]["closures"]["us_per_resource_cpu"]
    out["ratios"] = {f"closures_over_{k.replace(' ', '_')}": round(base / r["us_per_resource_cpu"], 2)
                     for k, r in out["results"].items() if k != "closures"}
    print("ratios:", ", ".join(f"{k} {v}" for k, v in out["ratios"].items()))
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

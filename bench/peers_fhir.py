"""bench/peers.py's fhir stage: FHIR bulk NDJSON -> MEDS, omop-behrt (extract + to-meds) against fhir2meds 0.0.3.

Run through ``python bench/peers.py --stages fhir`` (see its docstring); the data, the two children and the output
comparison live here.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import duckdb

from peers import ROOT, run_child

FHIR_NDJSON = ROOT / "tests" / "data" / "fhir" / "ndjson"
UUID = re.compile(rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
#: fhir2meds keeps a subject only if its Patient has an integer identifier under a system ending so (MIMIC's)
PATIENT_ID_SYSTEM = "http://bench.local/identifier/patient"


def build_fhir_ndjson(copies: int, out: Path) -> dict:
    """The NDJSON fixtures ``copies`` times as one ``<Type>.ndjson`` per type (fhir2meds reads ``Patient.ndjson``
    by that name); each copy rewrites every UUID (new patients); each Patient gets an integer identifier first in
    its list (fhir2meds drops events whose subject id is not an integer; our extract ignores identifiers)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = {}
    for f in sorted(FHIR_NDJSON.glob("*.ndjson.gz")):
        kind = f.name.split(".")[0]
        if kind != "log":
            lines[kind] = lines.get(kind, b"") + gzip.decompress(f.read_bytes())
    counts = {}
    for kind, data in lines.items():
        with open(out / f"{kind}.ndjson", "wb") as fh:
            for k in range(copies):
                copy = UUID.sub(b"\\1-c%d" % k, data)
                if kind == "Patient":
                    recs = [json.loads(line) for line in copy.splitlines() if line.strip()]
                    for i, r in enumerate(recs):
                        r["identifier"] = [{"system": PATIENT_ID_SYSTEM, "value": str(k * 100000 + i + 1)}] + \
                            r.get("identifier", [])
                    copy = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in recs)
                fh.write(copy)
        counts[kind] = data.count(b"\n") * copies
    return counts


CHILD_FHIR_OURS = """
import sys, time
from omop_behrt.adapters import fhir, meds
src, work, dst = sys.argv[1:4]
t = time.perf_counter()
fhir.extract(src, work, progress=False)
print("PHASE extract_s", time.perf_counter() - t)
meds.to_meds(work, dst)
"""
#: fhir2meds prints every resource whose code path it cannot resolve (whole JSON): to /dev/null, not a pipe
CHILD_FHIR2MEDS = """
import contextlib, os, sys
from fhir2meds.__main__ import main
src, work, dst = sys.argv[1:4]
sys.argv = ["fhir2meds", "raw_input_dir=" + src, "root_output_dir=" + dst]
with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
    try:
        main()
    except SystemExit as e:
        if e.code:
            raise
"""


def fhir_meds_counts(path: Path) -> dict:
    """Rows, subjects, rows with a null time and both by code prefix (ours: ``SNOMED`` of ``SNOMED/123``;
    fhir2meds: ``Condition//SNOMED`` of ``Condition//SNOMED//123``) of a MEDS dataset's data/."""
    con = duckdb.connect()
    files = [str(f) for f in sorted((path / "data").rglob("*.parquet"))]
    con.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet({files!r}, union_by_name=true)")
    rows, subjects, untimed = con.execute(
        "SELECT COUNT(*), COUNT(DISTINCT subject_id), COUNT(*) - COUNT(time) FROM m").fetchone()
    q = ("SELECT CASE WHEN contains(code, '//') THEN split_part(code, '//', 1) || '//' || split_part(code, '//', 2) "
         "ELSE split_part(code, '/', 1) END p, COUNT(*), COUNT(*) - COUNT(time) FROM m GROUP BY p ORDER BY p")
    by = {p: [n, nt] for p, n, nt in con.execute(q).fetchall()}
    return {"rows": rows, "subjects": subjects, "null_time": untimed, "by_prefix_rows_null_time": by}


def fhir_stage(args) -> dict | None:
    """FHIR bulk NDJSON -> MEDS: omop-behrt (FHIR extract + to-meds) against fhir2meds 0.0.3, alternating."""
    peer_python = args.fhir2meds_venv / "bin" / "python"
    if not peer_python.exists():
        print(f"no fhir2meds environment at {args.fhir2meds_venv}: python3 -m venv {args.fhir2meds_venv} && "
              f"{args.fhir2meds_venv}/bin/pip install fhir2meds==0.0.3", file=sys.stderr)
        return None
    work = Path(tempfile.mkdtemp(prefix="bench-peers-fhir-"))
    try:
        resources = build_fhir_ndjson(args.fhir_copies, work / "ndjson")
        tools = [("omop-behrt", sys.executable, CHILD_FHIR_OURS), ("fhir2meds", str(peer_python), CHILD_FHIR2MEDS)]
        runs, loads = {name: [] for name, _, _ in tools}, []
        for r in range(args.rounds):
            for name, py, code in (tools if r % 2 == 0 else tools[::-1]):
                for d in ("events", f"meds-{name}"):
                    shutil.rmtree(work / d, ignore_errors=True)
                loads.append(os.getloadavg()[0])
                res = run_child(py, code, str(work / "ndjson"), str(work / "events"), str(work / f"meds-{name}"))
                res["load"] = round(loads[-1], 2)
                runs[name].append(res)
                extra = f"  extract {res['extract_s']:.2f} s" if res.get("extract_s") else ""
                print(f"round {r + 1} {name:<11} {res['seconds']:>7.2f} s  cpu {res['cpu_s']:>6.2f} s  "
                      f"{res['peak_rss_mb']:>5} MB  load {loads[-1]:.2f}{extra}", flush=True)
        counts = {name: fhir_meds_counts(work / f"meds-{name}") for name in runs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {n: statistics.median(x["seconds"] for x in v) for n, v in runs.items()}
    cpu = {n: statistics.median(x["cpu_s"] for x in v) for n, v in runs.items()}
    rss = {n: statistics.median(x["peak_rss_mb"] for x in v) for n, v in runs.items()}
    extract = statistics.median(x["extract_s"] for x in runs["omop-behrt"])
    row = {"stage": "fhir", "copies": args.fhir_copies, "resources_in": sum(resources.values()),
           "resources_by_type": resources, "median_s": med, "median_cpu_s": cpu, "median_peak_rss_mb": rss,
           "median_extract_s_ours": round(extract, 2), "runs": runs,
           "min_max_s": {n: [min(x["seconds"] for x in v), max(x["seconds"] for x in v)] for n, v in runs.items()},
           "ratio_peer_over_ours": round(med["fhir2meds"] / med["omop-behrt"], 2),
           "cpu_ratio_peer_over_ours": round(cpu["fhir2meds"] / cpu["omop-behrt"], 2),
           "target_ratio": 2.0, "counts": counts,
           "load_average": [round(min(loads), 2), round(max(loads), 2)], "rounds": args.rounds}
    print(f"\n{'stage':<6} {'copies':>6} {'resources':>10} {'tool':<11} {'median s':>9} {'cpu s':>7} {'peak MB':>8} "
          f"{'fhir2meds / tool':>17} {'(cpu)':>6}  load")
    for n in runs:
        print(f"{'fhir':<6} {args.fhir_copies:>6} {row['resources_in']:>10,} {n:<11} {med[n]:>9.2f} {cpu[n]:>7.2f} "
              f"{rss[n]:>8.0f} {med['fhir2meds'] / med[n]:>16.2f}x {cpu['fhir2meds'] / cpu[n]:>5.2f}x  "
              f"{row['load_average']}")
    print(f"  omop-behrt extract alone {extract:.2f} s: fhir2meds / extract {med['fhir2meds'] / extract:.2f}x")
    for n, c in counts.items():
        print(f"  {n}: {c['rows']:,} rows ({c['null_time']:,} untimed), {c['subjects']:,} subjects, "
              f"by prefix [rows, untimed] {c['by_prefix_rows_null_time']}")
    return row

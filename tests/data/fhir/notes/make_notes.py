"""Rebuild the note fixtures in this folder (see README.md): ``python tests/data/fhir/notes/make_notes.py``.

bundle/: one of the Synthea R4 Bundles of tests/data/fhir/bundles with, for each of its Encounters, the clinical
note Synthea >= 2.5 writes twice (a DocumentReference and a DiagnosticReport with presentedForm), the text built
from the Bundle's own resources in the shape of Synthea's encounter note template.
ndjson/DocumentReference.000.ndjson: hand-written DocumentReferences, one per case the adapter must handle, that
refer to Patients and Encounters of the bulk NDJSON set in tests/data/fhir/ndjson.
"""
from __future__ import annotations

import base64
import gzip
import json
import uuid
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "bundles" / "Brett_Gottlieb_0d2177ba-f67b-4f29-addb-91040de55388.json.gz"
NS = uuid.UUID("6f1c7a52-2d0b-4f3e-9a57-3f0c2b1d9e10")     # fixed: the same ids on every rebuild

LOINC_NOTE = [{"system": "http://loinc.org", "code": "34117-2", "display": "History and physical note"},
              {"system": "http://loinc.org", "code": "51847-2", "display": "Evaluation+Plan note"}]
CLINICAL_NOTE = [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                              "code": "clinical-note", "display": "Clinical Note"}]}]
TEXT = "text/plain; charset=utf-8"


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def display(cc: dict) -> str:
    return cc["coding"][0]["display"]


def note_text(enc: dict, patient: dict, resources: list[dict]) -> str:
    """The note of one encounter in the layout of Synthea's encounter note template."""
    day = enc["period"]["start"][:10]
    born = date.fromisoformat(patient["birthDate"])
    d = date.fromisoformat(day)
    age = d.year - born.year - ((d.month, d.day) < (born.month, born.day))
    ref = f"urn:uuid:{enc['id']}"
    here = [r for r in resources if (r.get("encounter") or r.get("context") or {}).get("reference") == ref]
    before = sorted({display(r["code"]) for r in resources if r["resourceType"] == "Condition"
                     and r.get("onsetDateTime", "9999")[:10] < day})
    found = [display(r["code"]) for r in here if r["resourceType"] == "Condition"]
    meds = [display(r["medicationCodeableConcept"]) for r in here if r["resourceType"] == "MedicationRequest"]
    shots = [display(r["vaccineCode"]) for r in here if r["resourceType"] == "Immunization"]
    procs = [display(r["code"]) for r in here if r["resourceType"] == "Procedure"]
    reason = [c["display"] for rc in enc.get("reasonCode", []) for c in rc.get("coding", [])]
    name = patient["name"][0]["given"][0]
    lines = ["", day, "", "# Chief Complaint"]
    lines += [f"- {r}" for r in reason] or ["No complaints."]
    lines += ["", "# History of Present Illness", name,
              f" is a {age} year-old non-hispanic white {patient['gender']}."
              + (f" Patient has a history of {', '.join(before).lower()}." if before else ""), "",
              "# Social History", "Patient is single. Patient has never smoked.", "", "# Allergies",
              "No Known Allergies.", "", "# Medications", "No Active Medications." if not meds else
              "\n".join(f"{m.lower()}" for m in meds), "", "# Assessment and Plan"]
    lines += [f"Patient is presenting with {f.lower()}." for f in found]
    lines += ["", "## Plan", ""]
    if procs:
        lines += ["The following procedures were conducted:"] + [f"- {p.lower()}" for p in procs]
    if shots:
        lines += ["The patient was prescribed the following immunizations:"] + [f"- {s.lower()}" for s in shots]
    if meds:
        lines += ["The patient was prescribed the following medications:"] + [f"- {m.lower()}" for m in meds]
    return "\n".join(lines) + "\n"


def notes_bundle() -> dict:
    bundle = json.loads(gzip.decompress(SOURCE.read_bytes()))
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    added = []
    for enc in [r for r in resources if r["resourceType"] == "Encounter"]:
        text = note_text(enc, patient, resources)
        start, end = enc["period"]["start"], enc["period"]["end"]
        issued = start[:19] + ".466" + start[19:]
        doc_id, report_id = (str(uuid.uuid5(NS, f"{kind}/{enc['id']}")) for kind in ("doc", "report"))
        added.append({"resourceType": "DiagnosticReport", "id": report_id,
                      "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/"
                                           "us-core-diagnosticreport-note"]},
                      "status": "final", "category": [{"coding": LOINC_NOTE}], "code": {"coding": LOINC_NOTE},
                      "subject": {"reference": f"urn:uuid:{patient['id']}"},
                      "encounter": {"reference": f"urn:uuid:{enc['id']}"},
                      "effectiveDateTime": start, "issued": issued,
                      "presentedForm": [{"contentType": TEXT, "data": b64(text)}]})
        added.append({"resourceType": "DocumentReference", "id": doc_id,
                      "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/"
                                           "us-core-documentreference"]},
                      "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{doc_id}"}],
                      "status": "current", "type": {"coding": LOINC_NOTE}, "category": CLINICAL_NOTE,
                      "subject": {"reference": f"urn:uuid:{patient['id']}"}, "date": issued,
                      "content": [{"attachment": {"contentType": TEXT, "data": b64(text)},
                                   "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/"
                                                        "formatcode",
                                              "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                                              "display": "mimeType Sufficient"}}],
                      "context": {"encounter": [{"reference": f"urn:uuid:{enc['id']}"}],
                                  "period": {"start": start, "end": end}}})
    for r in added:
        bundle["entry"].append({"fullUrl": f"urn:uuid:{r['id']}", "resource": r,
                                "request": {"method": "POST", "url": r["resourceType"]}})
    return bundle


# Patients and Encounters of tests/data/fhir/ndjson
P1, P2 = "79a66c97-6131-3213-f3c9-4606946ab056", "129c6ac7-8d06-89de-ad63-0204a93e76c3"
E1, E2 = "00c7f717-4030-5582-2ed8-888ad2bc878e", "00d2903a-e2d6-20e6-df87-52bb6477f24f"


def doc(rid: str, subject: str | None, attachments: list[dict], when: dict, encounter: str | None = None,
        title: str | None = None) -> dict:
    r = {"resourceType": "DocumentReference", "id": rid, "status": "current",
         "type": {"coding": [dict(LOINC_NOTE[0])]} | ({"text": title} if title else {}), "category": CLINICAL_NOTE}
    if subject:
        r["subject"] = {"reference": subject}
    r |= {k: v for k, v in when.items() if k == "date"}
    r["content"] = [{"attachment": a} for a in attachments]
    ctx = {}
    if encounter:
        ctx["encounter"] = [{"reference": encounter}]
    if "start" in when:
        ctx["period"] = {"start": when["start"]}
    if ctx:
        r["context"] = ctx
    return r


def messy_rows() -> list[dict]:
    """One DocumentReference per case; the comment after each says what the adapter must do with it."""
    ok = "Progress note.\nPatient doing well; follow up in 6 weeks.\n"
    utf8 = b64("Temp 38.5 °C, naïve façade; µg/dL.")
    wrapped = "\n".join(utf8[i:i + 16] for i in range(0, len(utf8), 16))
    return [
        # 1 written: context.period.start is the time, context.encounter the visit
        doc("dr-ok", f"Patient/{P1}", [{"contentType": TEXT, "data": b64(ok)}],
            {"start": "1989-10-04T02:25:16-04:00", "date": "1989-10-05T09:00:00-04:00"}, f"Encounter/{E1}",
            "Progress note"),
        # 2 two attachments: the text one written as dr-two#1, the PDF skipped
        doc("dr-two", f"Patient/{P1}", [{"contentType": "text/plain", "data": b64("Discharge summary: stable.")},
                                        {"contentType": "application/pdf", "data": b64(b"%PDF-1.4 fake")}],
            {"date": "1989-12-16T23:41:10-05:00"}, f"Encounter/{E2}"),
        # 3 quarantined: data is not base64
        doc("dr-bad-b64", f"Patient/{P1}", [{"contentType": TEXT, "data": "this is not base64!"}],
            {"date": "1990-01-01"}),
        # 4 skipped: only a url (nothing is fetched)
        doc("dr-url", f"Patient/{P1}", [{"contentType": "text/plain", "url": "Binary/abc"}], {"date": "1990-01-02"}),
        # 5 quarantined at the end: the Patient is not in the input
        doc("dr-unknown", "Patient/not-in-the-input", [{"contentType": TEXT, "data": b64(ok)}],
            {"date": "1990-01-03"}),
        # 6 quarantined: no date and no context.period
        doc("dr-no-date", f"Patient/{P1}", [{"contentType": TEXT, "data": b64(ok)}], {}),
        # 7 written: charset ISO-8859-1 named and honoured (date only -> 00:00)
        doc("dr-latin1", f"Patient/{P2}", [{"contentType": "text/plain; charset=ISO-8859-1",
                                            "data": b64("Café au lait spots noted.".encode("latin-1"))}],
            {"date": "2015-03-02"}),
        # 8 quarantined: UTF-8 by default, and the bytes are not
        doc("dr-not-utf8", f"Patient/{P2}", [{"contentType": "text/plain",
                                              "data": b64("Café".encode("latin-1"))}], {"date": "2015-03-03"}),
        # 9 quarantined: no subject
        doc("dr-no-subject", None, [{"contentType": TEXT, "data": b64(ok)}], {"date": "2015-03-04"}),
        # 10 skipped: no attachment at all
        doc("dr-empty", f"Patient/{P2}", [], {"date": "2015-03-05"}),
        # 11 skipped: an image
        doc("dr-image", f"Patient/{P2}", [{"contentType": "image/png", "data": b64(b"\x89PNG\r\n")}],
            {"date": "2015-03-06"}),
        # 12 written: UTF-8 text with non-ASCII characters, base64 wrapped over lines as some servers write it
        doc("dr-utf8", f"Patient/{P2}", [{"contentType": "text/markdown; charset=utf-8", "data": wrapped}],
            {"date": "2016-07-01T10:00:00Z"}),
    ]


def main() -> None:
    (HERE / "bundle").mkdir(exist_ok=True)
    (HERE / "ndjson").mkdir(exist_ok=True)
    out = HERE / "bundle" / ("Brett_Gottlieb_0d2177ba-f67b-4f29-addb-91040de55388_notes.json.gz")
    out.write_bytes(gzip.compress(json.dumps(notes_bundle(), ensure_ascii=False).encode(), mtime=0))
    (HERE / "ndjson" / "DocumentReference.000.ndjson").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in messy_rows()))


if __name__ == "__main__":
    main()

"""References resolved once per file (adapters/fhir_part.py caches them): each resource still gets its own subject,
visit and reason, whichever resources before it in the file referred to the same Patient or Encounter."""
from __future__ import annotations

import json
from pathlib import Path

from omop_behrt.adapters import fhir
from omop_behrt.adapters.fhir_part import fhir_id
from omop_behrt.events import EventDir


def _condition(cid: str, subject: object, encounter: object = None, day: str = "2020-01-02") -> dict:
    res = {"resourceType": "Condition", "id": cid, "recordedDate": day,
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}]}}
    if subject is not None:
        res["subject"] = {"reference": subject}
    if encounter is not None:
        res["encounter"] = {"reference": encounter}
    return res


def _bundle(entries: list[tuple[str | None, dict]]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": r, **({"fullUrl": u} if u else {})} for u, r in entries]}


def _write(folder: Path, name: str, doc: dict) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(doc))


def test_shared_references_give_each_resource_its_own_subject_visit_and_reason(tmp_path):
    pat = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
    pat2 = {"resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1980-01-01"}
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "subject": {"reference": "urn:uuid:p1"},
           "class": {"code": "AMB"}, "period": {"start": "2020-01-01T00:00:00Z", "end": "2020-01-01T01:00:00Z"},
           "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}]}]}
    src = tmp_path / "in"
    # file a: urn:uuid:p1 / urn:uuid:e1 are fullUrls here; the same strings mean nothing in file b
    _write(src, "a.json", _bundle([
        ("urn:uuid:p1", pat), ("urn:uuid:e1", enc),
        (None, _condition("c1", "urn:uuid:p1", "urn:uuid:e1")),
        (None, _condition("c2", "urn:uuid:p1", "urn:uuid:e1")),
        (None, _condition("c3", "urn:uuid:e1")),                       # subject is the Encounter: refused
        (None, _condition("c4", "urn:uuid:e1")),                       # ... again, from the cache
        (None, _condition("c5", "urn:uuid:nobody")),                   # unresolvable
        (None, _condition("c6", "urn:uuid:nobody")),
        (None, _condition("c7", "urn:uuid:p1", "urn:uuid:p1")),        # "encounter" is a Patient: no visit
        (None, _condition("c8", "Patient/p1", "Encounter/e1")),
        (None, _condition("c9", "")),                                  # an empty reference: no subject
    ]))
    _write(src, "b.json", _bundle([
        ("urn:uuid:p2", pat2),
        (None, _condition("c10", "urn:uuid:p2", "urn:uuid:e1")),       # e1 is not a fullUrl in this file
        (None, _condition("c11", "urn:uuid:p1")),                      # nor is p1
        (None, _condition("c12", "urn:uuid:p2", "Encounter/e1")),
    ]))
    s = fhir.extract(src, tmp_path / "out", progress=False, workers=1)
    d = EventDir.open(tmp_path / "out")
    events = d.read_events(["subject_id", "visit_id", "domain"]).to_pylist()
    conditions = sorted((r["subject_id"], r["visit_id"]) for r in events if r["domain"] == "condition")
    p1, p2, e1 = fhir_id("p1"), fhir_id("p2"), fhir_id("e1")
    got = {(x, y) for x, y in conditions if y is not None and y > 0}
    assert got == {(p1, e1), (p2, e1)}
    assert sorted(x for x, y in conditions) == sorted([p1, p1, p1, p1, p2, p2])
    with_visit = [(x, y) for x, y in conditions if y is not None and y > 0]
    assert sorted(with_visit) == sorted([(p1, e1), (p1, e1), (p1, e1), (p2, e1)])     # c1, c2, c8, c12
    q = sorted((r["source"].rsplit("/", 1)[-1], r["row"], r["reason"]) for r in d.quarantine().to_pylist())
    assert q == sorted([("a.json", "entry[4]", "subject Encounter/e1 is not a Patient"),
                        ("a.json", "entry[5]", "subject Encounter/e1 is not a Patient"),
                        ("a.json", "entry[6]", "unresolvable reference: subject 'urn:uuid:nobody'"),
                        ("a.json", "entry[7]", "unresolvable reference: subject 'urn:uuid:nobody'"),
                        ("a.json", "entry[10]", "no subject (subject/patient)"),
                        ("b.json", "entry[2]", "unresolvable reference: subject 'urn:uuid:p1'")])
    assert (s.resources_in, s.resources_out, s.quarantined) == (15, 9, 6)     # 2 Patients, 1 Encounter, 12 Conditions


def _outputs(folder: Path) -> dict:
    """Every output table as sorted rows, and the summary but its timing."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    tables = {}
    for pattern in ("events/*.parquet", "persons.parquet", "quarantine*.parquet", "codes.parquet"):
        files = sorted(folder.glob(pattern))
        t = pa.concat_tables([pq.read_table(f) for f in files])
        tables[pattern] = t.sort_by([(c, "ascending") for c in t.column_names]).to_pylist()
    summary = json.loads((folder / "manifest.json").read_text())["summary"]
    summary.pop("seconds")
    return {"tables": tables, "summary": summary}


def test_large_bundles_are_skimmed_and_give_what_whole_parsing_gives(tmp_path, monkeypatch):
    from omop_behrt.adapters import fhir_part
    src = Path(__file__).parent / "data" / "fhir" / "bundles"
    calls: list = []
    real = fhir_part.read_bundle
    monkeypatch.setattr(fhir_part, "read_bundle", lambda p, wanted=None: calls.append(wanted) or real(p, wanted))
    whole = fhir.extract(src, tmp_path / "whole", progress=False, workers=1)
    assert len(calls) == 5 and all(w is None for w in calls)          # small Bundles: parsed whole
    calls.clear()
    monkeypatch.setattr(fhir_part, "_SKIM_BYTES", 0)                  # every Bundle is "large": skimmed
    skimmed = fhir.extract(src, tmp_path / "skim", progress=False, workers=1)
    assert len(calls) == 5 and all(w is not None and "Observation" in w for w in calls)
    assert sum(whole.ignored_by_type.values()) > 0                     # there were unwanted entries to skip
    assert _outputs(tmp_path / "whole") == _outputs(tmp_path / "skim")
    assert skimmed.events_out == whole.events_out > 0

"""FHIR adapter: the 5 Synthea Bundles and the 13-patient bulk NDJSON set (tests/data/fhir), bad input, ids, CLI.

Expected counts are computed here from the raw JSON, independently of the views and the adapter.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from omop_behrt.adapters import fhir, fhir_part
from omop_behrt.adapters.fhir_files import NotFhirError
from omop_behrt.events import EventDir, validate_events, validate_persons

DATA = Path(__file__).parent / "data" / "fhir"
BUNDLES, NDJSON = DATA / "bundles", DATA / "ndjson"
EVENT_TYPES = {"Encounter", "Condition", "Observation", "MedicationRequest", "Procedure", "Immunization",
               "AllergyIntolerance"}


def raw_resources(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.gz")):
        text = gzip.decompress(f.read_bytes()).decode()
        if f.name.endswith(".ndjson.gz"):
            out += [json.loads(line) for line in text.splitlines() if line.strip() and '"resourceType"' in line]
        else:
            out += [e["resource"] for e in json.loads(text)["entry"]]
    return out


def expected_events(resources: list[dict]) -> Counter:
    """Events per domain straight from the FHIR JSON: one per resource, plus one per Observation component."""
    n: Counter = Counter()
    domain = {"Encounter": "visit", "Condition": "condition", "MedicationRequest": "drug",
              "Procedure": "procedure", "Immunization": "immunization", "AllergyIntolerance": "allergy"}
    for r in resources:
        t = r["resourceType"]
        if t == "Observation":
            cats = {c["code"] for cc in r.get("category", []) for c in cc.get("coding", [])}
            d = "measurement" if "valueQuantity" in r or cats & {"laboratory", "vital-signs"} else "observation"
            n[d] += 1 + len(r.get("component", []))
        elif t in domain:
            n[domain[t]] += 1
    return n


@pytest.fixture(scope="module")
def bundle_events(tmp_path_factory):
    out = tmp_path_factory.mktemp("fhir_bundles")
    return fhir.extract(BUNDLES, out, progress=False), EventDir.open(out)


@pytest.fixture(scope="module")
def ndjson_events(tmp_path_factory):
    out = tmp_path_factory.mktemp("fhir_ndjson")
    return fhir.extract(NDJSON, out, progress=False), EventDir.open(out)


@pytest.mark.parametrize("which", ["bundle_events", "ndjson_events"])
def test_fixture_counts_match_the_raw_json(which, request):
    summary, d = request.getfixturevalue(which)
    raw = raw_resources(BUNDLES if which == "bundle_events" else NDJSON)
    types = Counter(r["resourceType"] for r in raw)
    events = validate_events(d.read_events())
    got = Counter(events.column("domain").to_pylist())
    assert got == expected_events(raw)
    assert summary.events_out == events.num_rows == sum(expected_events(raw).values())
    assert summary.persons == d.persons().num_rows == types["Patient"]
    validate_persons(d.persons())
    mapped = sum(n for t, n in types.items() if t in EVENT_TYPES | {"Patient"})
    assert summary.resources_read == len(raw)
    assert summary.resources_in == mapped == summary.resources_out + summary.quarantined
    assert summary.quarantined == 0 and d.quarantine().num_rows == 0
    assert sum(summary.ignored_by_type.values()) == len(raw) - mapped
    assert summary.visits == types["Encounter"]
    assert summary.unknown_code_systems == {}
    manifest = json.loads((d.path / "manifest.json").read_text())
    assert manifest["adapter"] == "fhir" and manifest["summary"]["events_out"] == events.num_rows


def test_bundle_fixture_exact_figures(bundle_events):
    summary, d = bundle_events
    assert (summary.resources_read, summary.resources_in, summary.events_out) == (531, 385, 416)
    assert summary.events_by_domain == {"visit": 45, "condition": 27, "measurement": 279, "observation": 18,
                                        "drug": 7, "procedure": 10, "immunization": 30}
    prefixes = Counter(c.split("/")[0] for c in d.read_events(["code"]).column("code").to_pylist())
    assert prefixes == {"LOINC": 297, "ActCode": 45, "SNOMED": 37, "CVX": 30, "RxNorm": 7}


def test_ndjson_fixture_exact_figures(ndjson_events):
    summary, d = ndjson_events
    assert (summary.resources_read, summary.resources_in, summary.events_out) == (5945, 5756, 5743)
    assert summary.ignored_by_type == {"Device": 16, "Location": 44, "Organization": 43, "Practitioner": 43,
                                       "PractitionerRole": 43}
    raw = [r for r in raw_resources(NDJSON) if r["resourceType"] == "Patient"]
    persons = d.persons().to_pylist()
    by_id = {p["source_id"]: p for p in persons}
    for r in raw:
        p = by_id[r["id"]]
        assert p["subject_id"] == int.from_bytes(hashlib.sha256(r["id"].encode()).digest()[:8], "big") & (2**63 - 1)
        assert str(p["birth_date"]) == r["birthDate"]
        assert p["sex"] == {"male": "M", "female": "F"}.get(r.get("gender"), "U")
        dead = r.get("deceasedDateTime")
        assert (str(p["death_date"]) if p["death_date"] else None) == (dead[:10] if dead else None)
    assert sum(1 for p in persons if p["death_date"]) == sum(1 for r in raw if "deceasedDateTime" in r) > 0
    periods = d.observation_periods().to_pylist()
    events = d.read_events(["subject_id", "time"]).to_pylist()
    assert len(periods) == 13
    first = min(e["time"] for e in events if e["subject_id"] == periods[0]["subject_id"])
    assert periods[0]["start_date"] == first.date() and all(p["start_date"] <= p["end_date"] for p in periods)


def test_events_link_to_their_encounter(ndjson_events):
    _, d = ndjson_events
    ev = d.read_events().to_pylist()
    cond = json.loads(gzip.decompress((NDJSON / "Condition.000.ndjson.gz").read_bytes()).splitlines()[0])
    enc_id = cond["encounter"]["reference"].split("/")[1]
    mine = [e for e in ev if e["domain"] == "condition" and e["visit_id"] == fhir.fhir_id(enc_id)
            and e["code"] == "SNOMED/" + cond["code"]["coding"][0]["code"]]
    assert len(mine) >= 1
    # time is the wall-clock time written in the resource (offset dropped)
    assert {str(e["time"])[:19].replace(" ", "T") for e in mine} >= {cond["onsetDateTime"][:19]}
    visits = {e["visit_id"] for e in ev if e["domain"] == "visit"}
    linked = [e for e in ev if e["domain"] != "visit" and e["visit_id"] > 0]
    assert all(e["visit_id"] in visits for e in linked)
    # allergies carry no encounter in this set: their visit is rebuilt from (person, day), negative
    assert all(e["visit_id"] < 0 for e in ev if e["domain"] == "allergy")


def _bundle_as_ndjson(bundle_file: Path, folder: Path, absolute: bool = False) -> str:
    """Write one Bundle's resources as NDJSON files per type, urn:uuid references rewritten as Type/id."""
    doc = json.loads(gzip.decompress(bundle_file.read_bytes()))
    urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in doc["entry"]}

    def fix(x):
        if isinstance(x, dict):
            return {k: (("http://example.org/fhir/" if absolute else "") + urls[v]
                        if k == "reference" and v in urls else fix(v)) for k, v in x.items()}
        return [fix(v) for v in x] if isinstance(x, list) else x
    folder.mkdir(parents=True)
    by_type: dict[str, list[str]] = {}
    for e in doc["entry"]:
        by_type.setdefault(e["resource"]["resourceType"], []).append(json.dumps(fix(e["resource"])))
    for t, lines in by_type.items():
        (folder / f"{t}.000.ndjson").write_text("\n".join(lines) + "\n")
    return next(e["resource"]["id"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")


def _sorted_events(d: EventDir) -> list[dict]:
    t = d.read_events()
    return t.take(pc.sort_indices(t, [(c, "ascending") for c in ("time", "code", "visit_id", "numeric_value")])
                  ).to_pylist()


@pytest.mark.parametrize("absolute", [False, True], ids=["Type/id", "absolute-url"])
def test_same_patient_as_bundle_and_as_ndjson_gives_identical_events(tmp_path, absolute):
    bundle = sorted(BUNDLES.glob("*.json.gz"))[1]
    _bundle_as_ndjson(bundle, tmp_path / "nd", absolute)
    a = fhir.extract(bundle, tmp_path / "a", progress=False)
    b = fhir.extract(tmp_path / "nd", tmp_path / "b", progress=False)
    da, db = EventDir.open(tmp_path / "a"), EventDir.open(tmp_path / "b")
    assert a.events_out == b.events_out > 50
    assert _sorted_events(da) == _sorted_events(db)
    assert da.persons().to_pylist() == db.persons().to_pylist()


def test_runs_are_deterministic(tmp_path, bundle_events):
    fhir.extract(BUNDLES, tmp_path / "again", progress=False)
    assert _sorted_events(EventDir.open(tmp_path / "again")) == _sorted_events(bundle_events[1])
    assert fhir.fhir_id("abc") == int.from_bytes(hashlib.sha256(b"abc").digest()[:8], "big") & (2**63 - 1)


def _bad_folder(root: Path) -> Path:
    """NDJSON with one of each kind of bad input, next to good lines."""
    pat = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"}

    def cond(**kw) -> str:
        return json.dumps({"resourceType": "Condition", "id": kw.pop("id"), "subject": {"reference": "Patient/p1"},
                           "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
                           "onsetDateTime": "2020-05-01", **kw})
    lines = [
        cond(id="ok"),                                                              # 1 good
        '{"resourceType": "Condition", "id": "broken", ',                          # 2 malformed JSON
        cond(id="nosubj", subject=None),                                            # 3 no subject
        cond(id="nodate", onsetDateTime=None),                                      # 4 no date
        json.dumps({"resourceType": "Foo", "id": "x"}),                             # 5 unknown resourceType
        cond(id="urn", subject={"reference": "urn:uuid:0000"}),                     # 6 unresolvable reference
        cond(id="feb30", onsetDateTime="2021-02-30"),                               # 7 impossible date
        cond(id="ghost", subject={"reference": "Patient/nobody"}),                  # 8 Patient not in the input
        cond(id="nocode", code={"text": "free text only"}),                         # 9 no code
        cond(id="local", code={"coding": [{"system": "http://example.org/codes", "code": "X1"}]}),  # 10 unknown system
    ]
    folder = root / "bad"
    folder.mkdir()
    (folder / "Patient.000.ndjson").write_text(json.dumps(pat) + "\n")
    (folder / "Condition.000.ndjson").write_text("\n".join(lines).replace('"subject": null, ', "")
                                                 .replace(', "onsetDateTime": null', "") + "\n")
    return folder


def test_bad_input_is_quarantined_with_file_line_and_reason(tmp_path):
    s = fhir.extract(_bad_folder(tmp_path), tmp_path / "out", progress=False)
    d = EventDir.open(tmp_path / "out")
    q = {int(r["row"]): r for r in d.quarantine().to_pylist()}
    assert all(r["source"].endswith("Condition.000.ndjson") for r in q.values())
    assert sorted(q) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert q[2]["reason"].startswith("malformed JSON")
    assert q[3]["reason"].startswith("no subject")
    assert q[4]["reason"] == "no time"
    assert q[5]["reason"] == "unknown resourceType 'Foo'"
    assert q[6]["reason"] == "unresolvable reference: subject 'urn:uuid:0000'"
    assert q[7]["reason"] == "impossible time '2021-02-30'"
    assert q[8]["reason"] == "unresolvable reference: subject Patient/nobody is not in the input"
    assert q[9]["reason"].startswith("no code")
    assert (s.resources_in, s.resources_out, s.quarantined) == (11, 3, 8)
    assert s.resources_in == s.resources_out + s.quarantined
    codes = sorted(d.read_events(["code"]).column("code").to_pylist())
    assert codes == ["SNOMED/44054006", "codes/X1"]
    assert s.unknown_code_systems == {"http://example.org/codes": 1}
    assert s.quarantined_by_reason == {"malformed JSON": 1, "no subject (subject/patient)": 1, "no time": 1,
                                       "unknown resourceType": 1, "unresolvable reference": 2, "impossible time": 1,
                                       "no code (no coding with a code)": 1}
    assert "codes" in s.table() and "8 quarantined" in s.table()


def test_bundle_entries_are_quarantined_by_entry_index(tmp_path):
    doc = json.loads(gzip.decompress(sorted(BUNDLES.glob("*.json.gz"))[0].read_bytes()))
    enc = next(i for i, e in enumerate(doc["entry"]) if e["resource"]["resourceType"] == "Encounter")
    doc["entry"][enc]["resource"]["period"]["start"] = "2019-13-01T00:00:00Z"
    (tmp_path / "b.json").write_text(json.dumps(doc))
    s = fhir.extract(tmp_path / "b.json", tmp_path / "out", progress=False)
    q = EventDir.open(tmp_path / "out").quarantine().to_pylist()
    assert [(r["row"], r["reason"]) for r in q] == [(f"entry[{enc}]", "impossible time '2019-13-01T00:00:00Z'")]
    assert s.resources_in == s.resources_out + 1


def test_a_file_that_is_not_fhir_fails_fast(tmp_path):
    (tmp_path / "notes.json").write_text('{"hello": "world"}')
    with pytest.raises(NotFhirError, match="notes.json: not FHIR"):
        fhir.extract(tmp_path / "notes.json", tmp_path / "out", progress=False)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "a"}\n')
    (folder / "table.ndjson").write_text('{"a": 1}\n')
    with pytest.raises(NotFhirError, match="table.ndjson: not FHIR"):
        fhir.extract(folder, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2" / "manifest.json").exists()


def test_is_fhir_source(tmp_path):
    from conftest import eunomia_file
    assert fhir.is_fhir_source(BUNDLES) and fhir.is_fhir_source(NDJSON)
    assert fhir.is_fhir_source(sorted(BUNDLES.glob("*.gz"))[0])
    assert not fhir.is_fhir_source(eunomia_file())
    (tmp_path / "person.csv").write_text("person_id\n1\n")
    assert not fhir.is_fhir_source(tmp_path)


def test_hash_collisions_are_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(fhir_part, "fhir_id", lambda s: 42)
    monkeypatch.setattr(fhir_part, "_subject_id", lambda s: 42)
    with pytest.raises(ValueError, match="collision.*'p1'.*'p2'|collision.*'p2'.*'p1'"):
        folder = tmp_path / "two"
        folder.mkdir()
        (folder / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "p1"}\n'
                                               '{"resourceType": "Patient", "id": "p2"}\n')
        fhir.extract(folder, tmp_path / "out", progress=False)


def test_user_views_add_and_override(tmp_path, ndjson_events):
    views = tmp_path / "views"
    views.mkdir()
    packaged = json.loads((Path(fhir.__file__).parents[1] / "sql" / "fhir" / "condition.json").read_text())
    packaged["where"] = [{"path": "code.coding.display.first().contains('(finding)').not()"}]
    (views / "condition.json").write_text(json.dumps(packaged))
    (views / "device.json").write_text(json.dumps({
        "resourceType": "ViewDefinition", "name": "device", "resource": "Device", "select": [{"column": [
            {"name": "subject", "path": "patient.reference"}, {"name": "time", "path": "manufactureDate"},
            {"name": "domain", "path": "'device'"}, {"name": "coding", "path": "type.coding.first()"}]}]}))
    s = fhir.extract(NDJSON, tmp_path / "out", views=views, progress=False)
    conditions = [r for r in raw_resources(NDJSON) if r["resourceType"] == "Condition"]
    findings = sum("(finding)" in r["code"]["coding"][0].get("display", "") for r in conditions)
    assert 0 < findings < len(conditions)
    assert s.events_by_domain["condition"] == len(conditions) - findings
    assert s.quarantined_by_reason == {"excluded by the where of every view for Condition": findings}
    assert s.events_by_domain["device"] == 16 and "Device" not in s.ignored_by_type
    assert s.resources_in == s.resources_out + s.quarantined


#: R5 field names (Encounter.class a list, actualPeriod, Procedure.occurrence[x], MedicationRequest.medication a
#: CodeableReference): valid
#: FHIR R5 by fhir.resources, not R4B (tests/test_fhir_inputs_valid.py checks both)
R5_RESOURCES = [
    {"resourceType": "Patient", "id": "p", "birthDate": "1980", "gender": "male", "deceasedBoolean": True},
    {"resourceType": "Encounter", "id": "e", "status": "completed", "subject": {"reference": "Patient/p"},
     "class": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}]}],
     "actualPeriod": {"start": "2024-01-02T10:00:00Z", "end": "2024-01-05"}},
    {"resourceType": "Procedure", "id": "pr", "status": "completed", "subject": {"reference": "Patient/p"},
     "encounter": {"reference": "Encounter/e"}, "occurrenceDateTime": "2024-01-03",
     "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]}},
    {"resourceType": "MedicationRequest", "id": "m", "status": "active", "intent": "order",
     "subject": {"reference": "Patient/p"}, "authoredOn": "2024-01-04", "medication": {"concept": {"coding": [
         {"system": "http://hl7.org/fhir/sid/ndc", "code": "0002-8215-01"}]}}}]

#: rows 0, 1 and 5 valid FHIR R4B; 2 (an unknown element), 3 (Feb 31st) and 4 (a string for a boolean) not
VALIDATE_MODE_LINES = [
    {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"},
    {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
     "onsetDateTime": "2020-01-01", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}},
    {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"}, "madeUp": 1,
     "onsetDateTime": "2020-01-01", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}},
    {"resourceType": "Patient", "id": "p2", "gender": "female", "birthDate": "1970-02-31"},
    {"resourceType": "Organization", "id": "o1", "active": "yes please"},
    {"resourceType": "Organization", "id": "o2", "name": "fine"}]


def test_r5_field_names(tmp_path):
    folder = tmp_path / "r5"
    folder.mkdir()
    (folder / "all.ndjson").write_text("\n".join(json.dumps(r) for r in R5_RESOURCES))
    fhir.extract(folder, tmp_path / "out", progress=False)
    d = EventDir.open(tmp_path / "out")
    ev = {e["domain"]: e for e in d.read_events().to_pylist()}
    assert ev["visit"]["code"] == "ActCode/IMP" and str(ev["visit"]["end_time"]) == "2024-01-05 00:00:00"
    assert ev["procedure"]["code"] == "CPT4/99213" and ev["procedure"]["visit_id"] == fhir.fhir_id("e")
    assert ev["drug"]["code"] == "NDC/0002-8215-01" and ev["drug"]["visit_id"] < 0
    p = d.persons().to_pylist()[0]
    assert (str(p["birth_date"]), p["sex"], p["death_date"]) == ("1980-07-01", "M", None)


def test_validate_mode_reports_invalid_resources(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "x.ndjson").write_text("\n".join(json.dumps(r) for r in VALIDATE_MODE_LINES))
    loose = fhir.extract(folder, tmp_path / "a", progress=False)
    strict = fhir.extract(folder, tmp_path / "b", validate=True, progress=False)
    assert (loose.quarantined, strict.quarantined) == (0, 3)
    assert (loose.ignored_by_type, strict.ignored_by_type) == ({"Organization": 2}, {"Organization": 1})
    assert strict.resources_in == strict.resources_out + strict.quarantined == 5
    q = EventDir.open(tmp_path / "b").quarantine().to_pylist()
    assert [r["row"] for r in q] == ["3", "4", "5"]
    assert all(r["reason"].startswith("invalid FHIR R4B") for r in q)
    assert "madeUp" in q[0]["reason"] and "birthDate" in q[1]["reason"]


def _part_files(out: Path, index: int | None = None) -> dict[str, int]:
    """The files one part (or every part) writes, with their mtimes: a part redone rewrites them."""
    tag = "[0-9]" * 5 if index is None else f"{index:05d}"
    files = (list((out / "events").glob(f"part-{tag}-*.parquet")) + list((out / ".fhir").glob(f"*-{tag}*.parquet"))
             + list(out.glob(f"quarantine-fhir-{tag}.parquet")))
    return {str(f.relative_to(out)): f.stat().st_mtime_ns for f in files}


def _rows(d: EventDir) -> pa.Table:
    t = d.read_events()
    return t.sort_by([(c, "ascending") for c in t.column_names])


def test_resume_skips_finished_parts(tmp_path, bundle_events, monkeypatch):
    """One part per Bundle; a part lost in an interruption is redone alone, the others are not touched, and the
    result equals the one-shot run row for row (a resume that redoes everything, or nothing, fails here)."""
    monkeypatch.setattr(fhir, "_MIN_PART_BYTES", 1)
    out = tmp_path / "out"
    fhir.extract(BUNDLES, out, progress=False, workers=1)
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["parts"]) == ["0", "1", "2", "3", "4"]
    finished = _part_files(out)
    assert len(_part_files(out, 2)) >= 3
    # a resume of a finished run does no part again
    s = fhir.extract(BUNDLES, out, progress=False, resume=True, workers=1)
    assert _part_files(out) == finished
    assert s.events_out == bundle_events[0].events_out and s.persons == 5
    # interrupted while part 2 ran: its record and files are gone
    del m["parts"]["2"]
    (out / "manifest.json").write_text(json.dumps(m))
    for f in _part_files(out, 2):
        (out / f).unlink()
    kept = {k: v for k, v in finished.items() if k not in _part_files(out, 2) and "-00002" not in k}
    s = fhir.extract(BUNDLES, out, progress=False, resume=True, workers=1)
    after = _part_files(out)
    assert {k: after[k] for k in kept} == kept                                  # the finished parts untouched
    assert set(_part_files(out, 2)) == {k for k in finished if "-00002" in k}   # the lost part redone
    assert s.events_out == bundle_events[0].events_out and s.persons == 5
    assert _rows(EventDir.open(out)).equals(_rows(bundle_events[1]))
    assert EventDir.open(out).persons().sort_by("subject_id").equals(bundle_events[1].persons().sort_by("subject_id"))


def test_cli_routes_fhir_sources(tmp_path, capsys):
    from omop_behrt.cli.main import main
    assert main(["extract", "--source", str(NDJSON), "--out", str(tmp_path / "o"), "--quiet",
                 "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "5,743 written" in out and "FHIR" in out
    assert json.loads((tmp_path / "s.json").read_text())["persons"] == 13
    (tmp_path / "x.json").write_text("[1, 2]")
    assert main(["extract", "--source", str(tmp_path / "x.json"), "--out", str(tmp_path / "p"),
                 "--format", "fhir"]) == 2
    assert "x.json: not FHIR" in capsys.readouterr().err
    assert main(["extract", "--source", str(NDJSON), "--out", str(tmp_path / "q"), "--domains", "drug"]) == 2
    assert "--domains: OMOP options" in capsys.readouterr().err
    assert main(["extract", "--source", str(NDJSON), "--out", str(tmp_path / "w"), "--quiet", "--workers", "1",
                 "--json", str(tmp_path / "w.json")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "w.json").read_text())["resources_out"] == json.loads(
        (tmp_path / "s.json").read_text())["resources_out"]
    cdm = tmp_path / "cdm.duckdb"
    cdm.touch()
    assert main(["extract", "--source", str(cdm), "--out", str(tmp_path / "r"), "--workers", "3", "--validate"]) == 2
    assert "--validate, --workers: FHIR options; " in capsys.readouterr().err


def test_views_are_shareable(ndjson_events):
    """Every packaged view has url, name, fhirVersion and a type on each column (the Shareable profile)."""
    folder = Path(fhir.__file__).parents[1] / "sql" / "fhir"
    views = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    assert len(views) == len(fhir.load_fhir_views()) >= 12

    def columns(sel):
        for s in sel:
            yield from s.get("column", [])
            yield from columns(s.get("select", []) + s.get("unionAll", []))
    for v in views:
        assert v["url"] and v["name"] and v["fhirVersion"], v["name"]
        assert all(c.get("type") for c in columns(v["select"])), v["name"]
    assert pa.types.is_int64(ndjson_events[1].persons().schema.field("subject_id").type)


@pytest.mark.parametrize("kind", ["collection", "batch", "searchset"])
def test_bundle_types_read_alike(tmp_path, kind, bundle_events):
    doc = json.loads(gzip.decompress(sorted(BUNDLES.glob("*.json.gz"))[2].read_bytes()))
    doc["type"] = kind
    for e in doc["entry"]:
        if kind != "batch":                     # a batch entry must carry its request (FHIR invariant bdl-3)
            e.pop("request", None)
        if kind == "searchset":
            e["search"] = {"mode": "match"}
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
    s = fhir.extract(tmp_path / "b.json.gz", tmp_path / "out", progress=False)
    assert s.resources_read == len(doc["entry"]) and s.quarantined == 0
    assert s.events_out == sum(expected_events([e["resource"] for e in doc["entry"]]).values())


def test_bulk_manifest_and_log_are_skipped(tmp_path):
    folder = tmp_path / "export"
    _bundle_as_ndjson(sorted(BUNDLES.glob("*.json.gz"))[0], folder)
    (folder / "manifest.json").write_text(json.dumps({
        "transactionTime": "2024-08-06T18:12:57Z", "request": "https://example.com/$export", "output": [
            {"type": "Patient", "url": "Patient.000.ndjson"}], "error": []}))
    (folder / "log.ndjson").write_bytes(gzip.decompress((NDJSON / "log.ndjson.gz").read_bytes()))
    assert fhir.is_fhir_source(folder)
    s = fhir.extract(folder, tmp_path / "out", progress=False)
    assert s.persons == 1 and s.quarantined == 0
    assert sorted(w.split(":")[0] for w in s.warnings) == ["log.ndjson", "manifest.json"]


def test_small_batches_give_the_same_events(tmp_path, ndjson_events, monkeypatch):
    """Flushing every 100 rows (inside one file) changes nothing but memory."""
    monkeypatch.setattr(fhir_part.Part.__init__, "__defaults__", (100,))
    s = fhir.extract(NDJSON, tmp_path / "out", progress=False)
    assert s.events_out == ndjson_events[0].events_out
    assert _sorted_events(EventDir.open(tmp_path / "out")) == _sorted_events(ndjson_events[1])
    assert len(EventDir.open(tmp_path / "out").event_files()) == 1


def test_an_event_directory_inside_the_source_is_not_read_as_input(tmp_path):
    folder = tmp_path / "export"
    _bundle_as_ndjson(sorted(BUNDLES.glob("*.json.gz"))[0], folder)
    first = fhir.extract(folder, folder / "events", progress=False)
    again = fhir.extract(folder, folder / "events", progress=False)
    assert again.resources_read == first.resources_read and again.events_out == first.events_out

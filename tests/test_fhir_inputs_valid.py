"""The FHIR inputs the tests build by hand, checked by the official models (fhir.resources, pydantic): the ones a
test calls valid are valid FHIR of the version it claims, the ones it calls broken are rejected for that reason.

fhir.resources checks structure, types and cardinality (not FHIRPath invariants such as bdl-3); where a test
relies on an invariant it says so itself.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from test_fhir import BUNDLES, R5_RESOURCES, VALIDATE_MODE_LINES, _bad_folder, _bundle_as_ndjson

r4b = pytest.importorskip("fhir.resources.R4B", reason="fhir.resources (the fhir-validate extra) is not installed")
r5 = pytest.importorskip("fhir.resources", reason="fhir.resources (the fhir-validate extra) is not installed")


def errors(resource: dict, models) -> str | None:
    """None when ``resource`` is valid for ``models`` (fhir.resources.R4B or fhir.resources), else the message."""
    try:
        cls = models.get_fhir_model_class(resource["resourceType"])
    except ValueError as e:                 # "Foo is not a valid FHIR Model"
        return str(e)
    try:
        cls.model_validate(resource)
    except Exception as e:          # pydantic ValidationError, or fhir.resources' own for a bad resourceType
        return str(e)
    return None


def test_r5_resources_are_r5_and_not_r4b():
    for r in R5_RESOURCES:
        assert errors(r, r5) is None, r["resourceType"]
    # the R5 field names are really R5: R4B rejects the Encounter (class a list, actualPeriod), the Procedure
    # (occurrenceDateTime) and the MedicationRequest (medication a CodeableReference)
    bad = {r["resourceType"] for r in R5_RESOURCES if errors(r, r4b)}
    assert bad == {"Encounter", "Procedure", "MedicationRequest"}


def test_validate_mode_lines_are_what_the_test_says():
    verdict = [errors(r, r4b) for r in VALIDATE_MODE_LINES]
    assert [i for i, v in enumerate(verdict) if v is None] == [0, 1, 5]
    assert "madeUp" in verdict[2] and "birthDate" in verdict[3] and "active" in verdict[4]


def test_bad_input_lines_are_bad_for_the_stated_reason(tmp_path):
    """Of the hand-built NDJSON of test_bad_input_is_quarantined...: which lines are invalid FHIR R4B at all.

    Line 2 is not JSON, 3 lacks Condition.subject (1..1), 5 is no resource type, 7 is no date: FHIR rejects
    them. Lines 4, 6, 8, 9, 10 are valid FHIR the adapter cannot turn into an event (no time, a reference it
    cannot resolve, no code): quarantined by the adapter's rules, not by FHIR's."""
    folder = _bad_folder(tmp_path)
    pat = json.loads((folder / "Patient.000.ndjson").read_text())
    assert errors(pat, r4b) is None
    verdict = {}
    for i, line in enumerate((folder / "Condition.000.ndjson").read_text().splitlines(), start=1):
        try:
            verdict[i] = errors(json.loads(line), r4b)
        except json.JSONDecodeError as e:
            verdict[i] = f"not JSON: {e}"
    assert sorted(i for i, v in verdict.items() if v) == [2, 3, 5, 7]
    assert "subject" in verdict[3] and "Foo" in verdict[5] and "onsetDateTime" in verdict[7]


@pytest.mark.parametrize("kind", ["transaction", "collection", "batch", "searchset"])
def test_bundles_are_valid_r4b(kind):
    """The Synthea fixtures (transaction Bundles) and the copies test_bundle_types_read_alike makes of one."""
    for f in sorted(BUNDLES.glob("*.json.gz")):
        doc = json.loads(gzip.decompress(f.read_bytes()))
        doc["type"] = kind
        for e in doc["entry"]:
            if kind in ("collection", "searchset"):
                e.pop("request", None)
            if kind == "searchset":
                e["search"] = {"mode": "match"}
        assert errors(doc, r4b) is None, f.name
        if kind in ("batch", "transaction"):               # bdl-3, an invariant fhir.resources does not check
            assert all(e["request"]["method"] and e["request"]["url"] for e in doc["entry"])


@pytest.mark.parametrize("absolute", [False, True])
def test_bundle_as_ndjson_is_valid_r4b(tmp_path, absolute):
    """The bulk-export NDJSON that tests make from a Bundle (references rewritten to Type/id)."""
    folder = tmp_path / "export"
    _bundle_as_ndjson(sorted(BUNDLES.glob("*.json.gz"))[0], folder, absolute=absolute)
    n = 0
    for f in sorted(Path(folder).glob("*.ndjson")):
        for line in f.read_text().splitlines():
            assert errors(json.loads(line), r4b) is None, f.name
            n += 1
    assert n > 100

"""Views compiled to one generated function (adapters/view_codegen.py) give exactly the closure path's rows.

Every packaged view (sql/fhir) runs over every resource of the tests/data/fhir fixtures, and over variants of
them that take the unusual branches (lists where one item is expected, nulls in arrays, absent choice keys,
several values in a single-valued column), through both paths and through the one function per resource type
that extract uses; rows and raised errors must be identical. The SQL-on-FHIR v2 conformance views (constructs
the packaged views do not use, most of them generated through the closure fallback) are compared the same way.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from omop_behrt.adapters.fhir_views import load_fhir_views
from omop_behrt.adapters.view_codegen import compile_views
from omop_behrt.adapters.viewdefinition import View, ViewError

DATA = Path(__file__).parent / "data"
FHIR = DATA / "fhir"
SUITE = DATA / "sql_on_fhir_v2" / "tests"


def _resources() -> list[dict]:
    out: list[dict] = []
    for f in sorted(FHIR.rglob("*")):
        name = f.name
        if not (name.endswith((".json", ".json.gz", ".ndjson", ".ndjson.gz"))):
            continue
        text = (gzip.decompress(f.read_bytes()) if name.endswith(".gz") else f.read_bytes()).decode()
        if ".ndjson" in name:
            out.extend(json.loads(line) for line in text.splitlines() if line.strip())
        else:
            doc = json.loads(text)
            out.extend(e["resource"] for e in doc.get("entry", []) if "resource" in e)
    out = [r for r in out if isinstance(r, dict) and "resourceType" in r]
    # the fixtures have no MedicationAdministration / Dispense / Statement: made from each 50th MedicationRequest
    requests = [r for r in out if r["resourceType"] == "MedicationRequest"][::50]
    for rt in ("MedicationAdministration", "MedicationDispense", "MedicationStatement"):
        out.extend({**r, "resourceType": rt, "context": r.get("encounter"), "effectiveDateTime": r.get("authoredOn"),
                    "whenHandedOver": r.get("authoredOn"), "dateAsserted": r.get("authoredOn")} for r in requests)
    return out


def _variants(res: dict) -> list[dict]:
    """Edits of the resource (shallow copies) that reach the less common branches of both paths."""
    out = []
    for key in ("subject", "encounter", "code", "component", "category", "effectivePeriod",
                "medicationCodeableConcept"):
        if key in res:
            two = [res[key], res[key]] if not isinstance(res[key], list) else res[key] + [None]
            out.extend({**res, key: value} for value in (two, None, "text"))
    if "valueQuantity" in res:
        v = dict(res)
        v["value"] = v.pop("valueQuantity")      # the base name holding a dict: ofType(Quantity) checks its type
        out.append(v)
    code = res.get("code")
    if isinstance(code, dict) and isinstance(code.get("coding"), list):
        out.append({**res, "code": {**code, "coding": [{"display": "no code"}, None] + code["coding"]}})
    return out


def _outcome(fn, res):
    try:
        return "rows", fn(res)
    except (ViewError, ValueError) as e:
        return "error", type(e).__name__, str(e)


def test_generated_equals_closures_on_fixtures():
    views = load_fhir_views()
    resources = _resources()
    assert len(resources) > 1000
    by_type: dict[str, list[View]] = {}
    for v in views.values():
        by_type.setdefault(v.resource, []).append(v)
    rows_seen = {name: 0 for name in views}
    errors = compared = 0
    seen: dict[str, int] = {}
    for res in resources:
        k = seen[res["resourceType"]] = seen.get(res["resourceType"], 0) + 1
        for var in [res] + (_variants(res) if k % 7 == 1 else []):     # edits of every 7th of each type
            typed = by_type.get(var["resourceType"], [])
            for view in typed:
                want = _outcome(view.closure_rows, var)
                assert _outcome(view.rows, var) == want, (view.name, var.get("id"))
                compared += 1
                if want[0] == "rows":
                    rows_seen[view.name] += len(want[1])
                else:
                    errors += 1
            if typed:     # the one function per type: each view's rows, or the first view's error
                combined = _outcome(_COMBINED[var["resourceType"]], var)
                first_error = next((o for o in (_outcome(v.closure_rows, var) for v in typed) if o[0] == "error"),
                                   None)
                if first_error is None:
                    assert combined == ("rows", tuple(v.closure_rows(var) for v in typed))
                else:
                    assert combined == first_error
    assert compared > 7000 and errors > 100
    assert all(n > 0 for n in rows_seen.values()), rows_seen    # every view made rows


_COMBINED: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _combined_functions():
    by_type: dict[str, list[View]] = {}
    for v in load_fhir_views().values():
        by_type.setdefault(v.resource, []).append(v)
    _COMBINED.update({t: compile_views(vs) for t, vs in by_type.items()})
    yield


def test_packaged_views_are_fully_generated_and_share_work():
    """No closure fallback in the packaged views; the two Observation views evaluate their where operand once."""
    views = load_fhir_views()
    for v in views.values():
        assert "_f" not in "".join(ln for ln in v._generate().source.splitlines() if "= _f" in ln), v.name
    obs = [v for v in views.values() if v.resource == "Observation"]
    assert len(obs) == 2
    src = compile_views(obs).source
    assert src.count("resource.get('valueQuantity', _M)") == 1       # was once per view and per column


@pytest.mark.parametrize("suite", sorted(SUITE.glob("*.json")), ids=lambda p: p.stem)
def test_generated_equals_closures_on_conformance_views(suite):
    doc = json.loads(suite.read_text())
    for case in doc["tests"]:
        try:
            view = View(case["view"])
        except (ViewError, ValueError):
            continue
        for res in doc["resources"]:
            assert _outcome(view.rows, res) == _outcome(view.closure_rows, res), (suite.stem, case["title"])

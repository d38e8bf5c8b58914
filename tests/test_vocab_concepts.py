"""The OMOP vocabularies on Eunomia's real vocabulary tables: ``concept`` ('Maps to') and ``ancestor`` roll-up."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from omop_behrt.adapters.omop import OmopCdm
from omop_behrt.vocab.mapping import map_events
from omop_behrt.vocab.registry import VocabularyError


@pytest.fixture(scope="module")
def cdm(eunomia_db):
    c = OmopCdm(eunomia_db)
    yield c
    c.db.close()


def events(*codes: tuple[str, int | None]) -> pa.Table:
    n = len(codes)
    return pa.table({"subject_id": pa.array(range(n), pa.int64()),
                     "time": pa.array([dt.datetime(2020, 1, 1)] * n, pa.timestamp("us")),
                     "code": [c for c, _ in codes], "concept_id": pa.array([i for _, i in codes], pa.int64()),
                     "visit_id": pa.array([1] * n, pa.int64()), "domain": ["condition"] * n})


def test_concept_resolves_source_codes_through_maps_to(cdm):
    t = events(("ICD10CM/K92.2", None), ("SNOMED/40481087", None), ("SNOMED/123", 40481087), ("LOCAL/x", None))
    res = map_events(t, "concept", cdm=cdm, progress=False)
    got = dict(zip(res.tokens.column("code").to_pylist(), res.tokens.column("token").to_pylist()))
    # K92.2 (ICD10CM, non-standard) 'Maps to' SNOMED 74474003; a concept_id wins over the code's own text
    assert got == {"ICD10CM/K92.2": "SNOMED/74474003", "SNOMED/123": "SNOMED/444814009"}
    assert res.report.top_unmapped[0]["code"] in {"SNOMED/40481087", "LOCAL/x"}
    assert res.report.events_unmapped == 2
    # without a CDM only events that already carry a standard concept map (to their own code)
    res = map_events(t, "concept", progress=False)
    assert res.tokens.column("token").to_pylist() == ["SNOMED/123"]


def test_concept_on_eunomia(eunomia_events, cdm):
    a = map_events(eunomia_events, "concept", cdm=cdm, progress=False)
    b = map_events(eunomia_events, "concept", progress=False)
    assert a.report.events_mapped == b.report.events_mapped == 217014
    assert a.tokens.equals(b.tokens)        # the adapter's code already is the standard concept


def test_ancestor_roll_up(eunomia_events, cdm):
    rep = map_events(eunomia_events, "ancestor(level=0)", cdm=cdm, progress=False).report
    assert (rep.events_mapped, rep.tokens, rep.distinct_tokens) == (217014, 309914, 121)
    rep = map_events(eunomia_events, "ancestor(level=3)", cdm=cdm, progress=False).report
    assert (rep.events_mapped, rep.events_unmapped, rep.tokens, rep.distinct_tokens) == (215769, 1245, 983521, 836)
    # to a set: 441840 Clinical finding, 4180628 Body system finding
    res = map_events(eunomia_events, "ancestor(ancestors=441840|4180628)", cdm=cdm, progress=False)
    assert (res.report.events_mapped, res.report.tokens) == (66366, 67386)
    # Eunomia's concept table lacks these two rows: the token falls back to OMOP/<concept_id>
    assert sorted(set(res.tokens.column("token").to_pylist())) == ["OMOP/4180628", "OMOP/441840"]
    with pytest.raises(VocabularyError, match="needs a CDM"):
        map_events(eunomia_events, "ancestor(level=2)", progress=False)
    with pytest.raises(VocabularyError, match="expected a non-negative integer"):
        map_events(eunomia_events, "ancestor(level=two)", cdm=cdm, progress=False)


def test_ancestor_composes_with_caliber(eunomia_events, cdm):
    rep = map_events(eunomia_events, "condition=caliber,ancestor(level=3); *=source", cdm=cdm, progress=False).report
    assert rep.by_member["caliber"] == 53179 and rep.events_unmapped == 0

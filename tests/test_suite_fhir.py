"""The synthea_fhir suite on a FHIR extraction: the FHIR fixtures (tests/data/fhir, 18 Synthea patients) extracted,
index dates drawn at visit days, and every task with positives checked against an independent pandas count."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from omop_behrt.adapters import fhir
from omop_behrt.events import EventDir
from omop_behrt.tasks.suite import Suite, build

FHIR = Path(__file__).parent / "data" / "fhir"
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def fhir_events(tmp_path_factory) -> EventDir:
    out = tmp_path_factory.mktemp("fhir_suite") / "ev"
    fhir.extract(FHIR, out, progress=False)
    return EventDir.open(out)


@pytest.fixture(scope="module")
def built(fhir_events):
    return build(fhir_events, "synthea_fhir")


def _follow_up(events: EventDir) -> pd.Series:
    """Each person's end of follow-up as the suite module docstring defines it: observation end, else last event,
    a death ending it earlier."""
    ev = events.read_events(["subject_id", "time"]).to_pandas()
    op = events.observation_periods().to_pandas().groupby("subject_id")["end_date"].max().map(pd.Timestamp)
    end = ev.groupby("subject_id")["time"].max()
    end.update(op)
    death = events.persons().to_pandas().set_index("subject_id")["death_date"].dropna().map(pd.Timestamp)
    return end.combine(death.reindex(end.index), lambda a, b: a if pd.isna(b) else min(a, b))


def _expected(events: EventDir, index: pd.DataFrame, codes, domains, start: int, end: int) -> dict:
    """Labels row by row in pandas: 1 when an outcome event (in ``domains`` if given) falls in the window and inside
    follow-up; a row without one is kept only when followed to the window's end."""
    ev = events.read_events(["subject_id", "time", "code", "domain"]).to_pandas()
    hits = ev[ev["code"].isin(codes) & (ev["domain"].isin(domains) if domains else True)]
    follow = _follow_up(events)
    out = {}
    for s, ix in zip(index["subject_id"], index["index_date"]):
        t = hits.loc[hits["subject_id"] == s, "time"]
        t = t[t < follow[s] + DAY]
        hit = bool(((t >= ix + start * DAY) & (t < ix + (end + 1) * DAY)).any())
        if hit or follow[s] >= ix + end * DAY:
            out[(s, ix)] = int(hit)
    return out


def test_fixture_extraction_spells_codes_as_the_suite_does(fhir_events):
    ev = fhir_events.read_events(["code", "domain"]).to_pandas()
    visits = set(ev.loc[ev["domain"] == "visit", "code"])
    assert {"ActCode/AMB", "ActCode/EMER", "ActCode/IMP"} <= visits
    assert not any(c.startswith("Visit/") for c in visits)
    assert set(ev.loc[ev["domain"] == "immunization", "code"].str.split("/").str[0]) == {"CVX"}
    suite = Suite.load("synthea_fhir")
    prefixes = set(ev["code"].str.split("/").str[0])
    for t in suite.tasks:
        assert {c.split("/")[0] for c in t.codes} <= prefixes, t.name
    # the same tasks as the OMOP Synthea suite, only the visit codes spelled as FHIR Encounter.class
    omop = Suite.load("synthea_1k")
    assert [t.name for t in suite.tasks] == [t.name for t in omop.tasks]
    rename = {"Visit/ER": "ActCode/EMER", "Visit/IP": "ActCode/IMP"}
    for a, b in zip(omop.tasks, suite.tasks):
        assert tuple(rename.get(c, c) for c in a.codes) == b.codes and a.window == b.window
        assert (a.kind, a.domains, a.new_onset) == (b.kind, b.domains, b.new_onset)


def test_index_dates_are_visit_day_ends_inside_the_bounds(fhir_events, built):
    assert built.attrition["persons"] == 18
    ix = built.index.to_pandas()
    assert len(ix) == built.attrition["index rows"] == 18
    assert ix["subject_id"].is_unique
    ev = fhir_events.read_events(["subject_id", "time", "domain"]).to_pandas()
    visit_days = set(zip(ev.loc[ev["domain"] == "visit", "subject_id"],
                         ev.loc[ev["domain"] == "visit", "time"].dt.normalize()))
    first = ev.groupby("subject_id")["time"].min()
    follow = _follow_up(fhir_events)
    for s, d in zip(ix["subject_id"], ix["index_date"]):
        assert d == d.normalize() and (s, d - DAY) in visit_days
        assert d - DAY >= first[s] + 365 * DAY and d + 365 * DAY <= follow[s]
    assert sorted(np.unique(built.split)) == ["test", "train", "val"]


def test_labels_equal_an_independent_count(fhir_events, built):
    ix = built.index.to_pandas()
    with_positives = []
    for t in built.suite.tasks:
        domains = ("visit",) if t.kind == "visit" else t.domains
        expected = _expected(fhir_events, ix, t.codes, domains, *t.window)
        got = built.tasks[t.name].labels.to_pandas()
        assert dict(zip(zip(got["subject_id"], got["index_date"]), got["label"].astype(int))) == expected, t.name
        assert built.tasks[t.name].attrition["positives"] == sum(expected.values())
        if sum(expected.values()):
            with_positives.append(t.name)
    # the FHIR spellings find outcomes: vaccines (CVX in the immunization domain), conditions, ER / inpatient visits
    assert {"flu_vaccine_1y", "respiratory_infection_1y", "er_visit_1y", "inpatient_2y"} <= set(with_positives)
    counts = built.counts()
    assert sum(c["positives"] for c in counts["flu_vaccine_1y"].values()) == 5
    assert sum(c["positives"] for c in counts["er_visit_1y"].values()) == 3
    assert sum(c["rows"] for c in counts["td_vaccine_2y"].values()) == 15      # 3 not followed for two years

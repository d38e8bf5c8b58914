"""FHIR Bundles at speed: replicated Synthea bundles extract to N x the original, and the skimming reader (msgspec:
types without a view left unparsed) gives exactly what parsing every resource gives, odd Bundles included.

The replicas are built here from tests/data/fhir/bundles: every UUID (ids, fullUrls, references) gets a copy
suffix, so each copy is new patients and nothing is a duplicate.
"""
from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from omop_behrt.adapters import fhir, fhir_reader
from omop_behrt.events import EventDir

BUNDLES = Path(__file__).parent / "data" / "fhir" / "bundles"
UUID = re.compile(rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
COPIES = 3
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def replicate(dst: Path, copies: int) -> Path:
    """``copies`` copies of the 5 bundles with rewritten ids, as plain .json (one copy as .json.gz)."""
    dst.mkdir()
    for p in sorted(BUNDLES.glob("*.json.gz")):
        data = gzip.decompress(p.read_bytes())
        for k in range(copies):
            out = UUID.sub(b"\\1-r%d" % k, data)
            name = f"r{k}-{p.name[:-3]}"
            if k == 0:
                (dst / (name + ".gz")).write_bytes(gzip.compress(out))
            else:
                (dst / name).write_bytes(out)
    return dst


def events_table(out: Path) -> pa.Table:
    t = pa.concat_tables(pq.read_table(f) for f in sorted((out / "events").glob("*.parquet")))
    return t.sort_by([(c, "ascending") for c in t.column_names])


def code_counts(out: Path) -> Counter:
    t = events_table(out)
    return Counter({(r["values"]): r["counts"] for r in pc.value_counts(t.column("code")).to_pylist()})


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    out = tmp_path_factory.mktemp("original")
    return fhir.extract(BUNDLES, out, progress=False, workers=1), out


def test_replicated_bundles_are_n_times_the_original(original, tmp_path, monkeypatch):
    summary, out = original
    src = replicate(tmp_path / "in", COPIES)
    monkeypatch.setattr(fhir, "_PART_BYTES", 1 << 20)       # several parts, run by 2 workers
    rep = fhir.extract(src, tmp_path / "out", progress=False, workers=2)
    assert len(EventDir.open(tmp_path / "out").manifest["parts"]) > 1
    assert rep.events_by_domain == {d: COPIES * n for d, n in summary.events_by_domain.items()}
    assert rep.events_out == COPIES * summary.events_out > 0
    assert rep.persons == COPIES * summary.persons == COPIES * 5
    assert rep.resources_by_type == {t: COPIES * n for t, n in summary.resources_by_type.items()}
    assert rep.ignored_by_type == {t: COPIES * n for t, n in summary.ignored_by_type.items()}
    assert rep.ignored_by_type["ExplanationOfBenefit"] > 0 and "Claim" in rep.ignored_by_type
    assert rep.duplicates_by_type == {} and rep.quarantined == COPIES * summary.quarantined
    assert rep.visits == COPIES * summary.visits
    assert code_counts(tmp_path / "out") == Counter({c: COPIES * n for c, n in code_counts(out).items()})
    # every id rewritten: the replicas' persons are all new
    persons = pq.read_table(tmp_path / "out" / "persons.parquet").column("source_id").to_pylist()
    assert len(set(persons)) == COPIES * 5


def _extract_both(src: Path, tmp_path: Path, monkeypatch, **kw) -> tuple:
    """(summary, out) skimming with msgspec, then with every resource parsed."""
    pytest.importorskip("msgspec")
    skim = fhir.extract(src, tmp_path / "skim", progress=False, workers=1, **kw)
    monkeypatch.setattr(fhir_reader, "msgspec", None)
    plain = fhir.extract(src, tmp_path / "plain", progress=False, workers=1, **kw)
    return (skim, tmp_path / "skim"), (plain, tmp_path / "plain")


def _same(a: tuple, b: tuple) -> None:
    sa, sb = (dict(s.as_dict(), seconds=0, source="") for s, _ in (a, b))
    assert sa == sb
    assert events_table(a[1]).equals(events_table(b[1]))
    for name in ("persons.parquet", "codes.parquet"):
        assert pq.read_table(a[1] / name).equals(pq.read_table(b[1] / name))
    qa, qb = (pa.concat_tables(pq.read_table(f) for f in sorted(o.glob("quarantine*.parquet"))) for _, o in (a, b))
    assert sorted(qa.to_pylist(), key=str) == sorted(qb.to_pylist(), key=str)


def test_skimming_gives_what_parsing_everything_gives(tmp_path, monkeypatch):
    skim, plain = _extract_both(BUNDLES, tmp_path, monkeypatch, notes=True)
    _same(skim, plain)
    assert skim[0].ignored_by_type["Claim"] == 52 and skim[0].events_out > 0


def _entry(res: object, url: str | None = None) -> dict:
    e = {} if res is Ellipsis else {"resource": res}
    if url:
        e["fullUrl"] = url
    return e


def test_skimming_odd_bundles_matches_plain_reading(tmp_path, monkeypatch):
    pat = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "urn:uuid:pr1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}, "onsetDateTime": "2020-01-01"}
    ok = dict(cond, id="c2", subject={"reference": "urn:uuid:p1"}, encounter={"reference": "urn:uuid:dup"})
    late_type = {"id": "c3", "subject": {"reference": "urn:uuid:p1"}, "onsetDateTime": "2020-02-01",
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "2"}]}, "resourceType": "Condition"}
    entries = [_entry(pat, "urn:uuid:p1"),
               _entry({"resourceType": "Practitioner", "id": "pr1"}, "urn:uuid:pr1"),   # a subject, unparsed
               _entry(cond), _entry(ok), _entry(late_type),                               # type not first
               _entry({"resourceType": "Encounter", "id": "e1", "subject": {"reference": "urn:uuid:p1"},
                       "period": {"start": "2020-01-01"}, "class": {"system": ACT, "code": "AMB"}}, "urn:uuid:dup"),
               _entry({"resourceType": "Claim"}, "urn:uuid:dup"),                         # no id: e1 stands
               _entry({"resourceType": "NotAType", "id": "x"}), _entry(None), _entry(...), _entry([1, 2]),
               _entry({"resourceType": "Claim", "id": "k9", "contained": [{"resourceType": "Coverage"}]}),
               _entry({"resourceType": "Claim", "id": "c4", "resourceType ": 1}),
               _entry({"resourceType": "ExplanationOfBenefit", "id": "eob", "note": "caf\u00e9"})]
    src = tmp_path / "in"
    src.mkdir()
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    (src / "a.json").write_text(json.dumps(bundle, ensure_ascii=False), encoding="utf-8")
    text = json.dumps(dict(bundle, entry=entries[:1] + [_entry({"resourceType": "Claim", "id": "k", "x": "@"})]))
    (src / "b.json").write_bytes(text.encode().replace(b"@", b"\xff"))          # not UTF-8 in a Claim: malformed
    (src / "c.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": {"a": 1}}))
    (src / "d.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [None]}))
    c5 = dict(cond, id="c5", subject={"reference": "Patient/p1"},
              code={"coding": [{"system": "http://snomed.info/sct", "code": "5"}]})
    twice = json.dumps(c5)[:-1] + ', "resourceType": "Claim"}'
    twice = twice.replace('"Condition"', '"Claim"', 1)[:-len('"Claim"}')] + '"Condition"}'   # Claim ... Condition
    (src / "e.json").write_text('{"resourceType": "Bundle", "type": "batch", "entry": [{"resource": %s}]}' % twice)
    for name, depth in (("f.json", 1010), ("g.json", 1100)):   # deeper than msgspec goes; g deeper than orjson
        deep = '{"resourceType": "Claim", "x": %s}' % ("[" * depth + "]" * depth)
        (src / name).write_text('{"resourceType": "Bundle", "type": "batch", "entry": [{"resource": %s}]}' % deep)
    skim, plain = _extract_both(src, tmp_path, monkeypatch)
    _same(skim, plain)
    s = skim[0]
    assert s.ignored_by_type == {"Claim": 4, "ExplanationOfBenefit": 1, "Practitioner": 1}
    assert s.resources_by_type["NotAType"] == 1 and s.events_out == 4     # c2, c3, c5 and the Encounter e1
    reasons = " | ".join(s.quarantined_by_reason)
    assert "subject Practitioner/pr1 is not a Patient" in reasons and "malformed JSON" in reasons
    assert "unknown resourceType" in reasons and "bundle entry without a resource" in reasons
    visits = pq.read_table(skim[1] / "events").filter(pc.equal(pc.field("code"), "SNOMED/1"))
    assert visits.num_rows == 1 and visits.column("visit_id")[0].as_py() == fhir.fhir_id("e1")


def test_skimming_odd_ndjson_matches_plain_reading(tmp_path, monkeypatch):
    pat = {"resourceType": "Patient", "id": "p9", "gender": "male", "birthDate": "1980-05-05"}
    cond = {"resourceType": "Condition", "id": "c9", "subject": {"reference": "Patient/p9"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "9"}]}, "onsetDateTime": "2021-01-01"}
    claim = {"resourceType": "Claim", "id": "k1", "patient": {"reference": "Patient/p9"}}
    lines = [json.dumps(pat), json.dumps(claim), "", json.dumps(cond),
             json.dumps(claim)[:-1] + ', "x": [1,]}',                                  # malformed: quarantined
             json.dumps(dict(claim, note="@")).replace("@", "\\udcff"),                 # lone surrogate escape
             '{"resourceType": "Claim", "id": "k2", "resourceType": "Condition"}',      # the last one counts
             '{"id": "k3", "resourceType": "Claim"}', '{"resourceType": "Nonsense", "id": "n"}',
             json.dumps(dict(claim, id="k4", note="na\u00efve"), ensure_ascii=False), "[1, 2]",
             '{"resourceType": "Claim", "x": %s}' % ("[" * 1010 + "]" * 1010),            # deeper than msgspec
             '{"resourceType": "Claim", "x": %s}' % ("[" * 1100 + "]" * 1100)]            # and than orjson
    src = tmp_path / "in"
    src.mkdir()
    (src / "mixed.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with gzip.open(src / "more.ndjson.gz", "wb") as f:
        f.write(json.dumps(claim).encode() + b"\n" + json.dumps(claim)[:-1].encode() + b', "y": "\xff"}\n')
    skim, plain = _extract_both(src, tmp_path, monkeypatch)
    _same(skim, plain)
    s = skim[0]
    assert s.ignored_by_type == {"Claim": 5} and s.events_out == 1 and s.persons == 1
    assert s.resources_by_type["Nonsense"] == 1
    reasons = " | ".join(s.quarantined_by_reason)
    assert "malformed JSON" in reasons and "not a JSON object" in reasons

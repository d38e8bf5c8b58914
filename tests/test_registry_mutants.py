"""Fast tests that kill mutants of omop_behrt/vocab/registry.py which test_vocab.py's fast tests let survive.

The mapping core without a CDM: spec strings (splitting, domain parts, parameters, every refusal word for word),
the registry's names, the chain's first-member-decides rule (a later member is asked only for what is left), the
per-domain split, a member's output checked against MAPPING_SCHEMA, and the events a mapping reads (an Arrow
table or a directory, all or some subjects). Expected values are written by hand from small tables built here.
"""
from __future__ import annotations

import datetime as dt
from importlib import metadata

import pyarrow as pa
import pytest

from omop_behrt.events import DOMAINS
from omop_behrt.vocab import registry
from omop_behrt.vocab.mapping import map_events
from omop_behrt.vocab.registry import (ENTRY_POINT_GROUP, MAPPING_SCHEMA, Chain, MapContext, PerDomain, Source,
                                       Vocabulary, VocabularyError, get_vocabulary, mapping_table)


def _error(spec, **params) -> str:
    with pytest.raises(VocabularyError) as e:
        get_vocabulary(spec, **params)
    return str(e.value)


def test_spec_refusals_word_for_word():
    assert _error("source)") == "vocabulary spec 'source)': unbalanced ')'"
    assert _error("source((") == "vocabulary spec 'source((': unbalanced '('"
    assert _error(" , ") == "vocabulary spec ' , ' names no vocabulary"
    assert _error("9source") == "vocabulary spec item '9source': expected name or name(key=value,...)"
    assert _error("source(column)") == "vocabulary spec item 'source(column)': parameter 'column' is not key=value"
    assert _error(3) == "vocabulary spec must be a non-empty string or a Vocabulary; got 3"
    assert _error("  ") == "vocabulary spec must be a non-empty string or a Vocabulary; got '  '"
    assert _error("condition=source; source") == (
        "vocabulary spec 'condition=source; source': part 'source' names no domain; in a per-domain spec every "
        "part reads domain=vocabularies (or *=vocabularies)")
    assert _error("labs|condition=source") == (
        f"vocabulary spec 'labs|condition=source': unknown domain(s) ['labs']; expected some of {list(DOMAINS)} or *")
    assert _error("source(col=code)") == (
        "vocabulary 'source': unknown parameter(s) ['col']; expected some of ['column']")
    assert _error("source", column="x") == (
        "vocabulary 'source': parameter column='x'; expected one of ['code', 'source_code']")
    assert _error("source(column=a=b)") == (
        "vocabulary 'source': parameter column='a=b'; expected one of ['code', 'source_code']")
    assert _error("source(column=(code),x)") == (
        "vocabulary spec item 'source(column=(code),x)': parameter 'x' is not key=value")
    assert _error("X=source") == (
        f"vocabulary spec 'X=source': unknown domain(s) ['X']; expected some of {list(DOMAINS)} or *")
    msg = _error("nosuch")
    assert msg.startswith("unknown vocabulary 'nosuch'; available: ancestor, caliber, concept, csv, drop, source")
    assert msg.endswith(f" (plug-ins register in the entry-point group {ENTRY_POINT_GROUP!r})")


def test_spec_parsing_keeps_parameters_and_domains():
    v = get_vocabulary(" source ( column = source_code ) ")
    assert isinstance(v, Source) and v.column == "source_code" and v.spec() == "source(column=source_code)"
    assert get_vocabulary(" source ", column="source_code").spec() == "source(column=source_code)"
    assert get_vocabulary(v) is v
    chain = get_vocabulary("source(column=source_code),,source")
    assert isinstance(chain, Chain) and [m.spec() for m in chain.parts] == ["source(column=source_code)", "source"]
    one = get_vocabulary("condition | drug = source")
    assert isinstance(one, PerDomain) and one.spec() == "condition|drug=source"
    (domains, c), = one.parts
    assert domains == ["condition", "drug"] and isinstance(c, Chain) and [m.spec() for m in c.parts] == ["source"]
    both = get_vocabulary("drug=source(column=source_code),source; *=source")
    assert [d for d, _ in both.parts] == [["drug"], ["*"]]
    assert [m.spec() for m in both.parts[0][1].parts] == ["source(column=source_code)", "source"]
    assert [m.spec() for m in both.members()] == ["source(column=source_code)", "source", "source"]
    assert repr(both) == "<PerDomain drug=source(column=source_code),source; *=source>"
    assert registry.split_list(" a | |b ") == ["a", "b"] and registry.split_list(None) == []


def test_a_registered_name_is_the_spec_and_a_non_vocabulary_is_refused(monkeypatch):
    eps = {"mine": metadata.EntryPoint("mine", "omop_behrt.vocab.registry:Source", ENTRY_POINT_GROUP),
           "bad": metadata.EntryPoint("bad", "json:dumps", ENTRY_POINT_GROUP)}
    monkeypatch.setattr(registry, "available_vocabularies", lambda: eps)
    v = get_vocabulary("mine(column=source_code)")
    assert isinstance(v, Source) and v.name == "mine" and v.spec() == "mine(column=source_code)"
    assert _error("bad") == "entry point 'bad' (json:dumps) is not a Vocabulary subclass"


class _Fixed(Vocabulary):
    """A test vocabulary: fixed key -> token rows (None drops); it records the keys it was asked about."""

    name = "fixed"

    def __init__(self, rows: dict[int, list], tag: str):
        super().__init__(tag=tag)
        self.rows, self.asked, self.contexts = rows, [], []

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        self.asked.append(keys.column("key_id").to_pylist())
        self.contexts.append(ctx)
        got = [(k, t) for k in self.asked[-1] for t in self.rows.get(k, [])]
        return pa.table({"token": pa.array([t for _, t in got], pa.string()),
                         "key_id": pa.array([k for k, _ in got], pa.int32())})


def _keys(domains: list[str]) -> pa.Table:
    return pa.table({"key_id": pa.array(range(len(domains)), pa.int64()), "domain": domains,
                     "code": [f"X/{i}" for i in range(len(domains))]})


def test_chain_first_member_decides_and_later_members_see_only_the_rest():
    first = _Fixed({0: ["A", "B"], 1: [None]}, "1")            # key 1 dropped on purpose: decided too
    second = _Fixed({0: ["no"], 2: ["C"]}, "2")
    third = _Fixed({3: ["D"]}, "3")
    never = _Fixed({}, "4")
    chain = Chain([first, second, third, never])
    ctx = MapContext(con=None)
    mapping, who = chain.map_keys_by_member(_keys(["condition"] * 4), ctx)
    assert all(c is ctx for m in (first, second, third) for c in m.contexts)     # the caller's context
    assert mapping.schema == MAPPING_SCHEMA
    assert sorted(zip(mapping["key_id"].to_pylist(), mapping["token"].to_pylist()), key=str) == \
        sorted([(0, "A"), (0, "B"), (1, None), (2, "C"), (3, "D")], key=str)
    assert sorted(zip(who["key_id"].to_pylist(), who["member"].to_pylist())) == \
        [(0, "fixed(tag=1)"), (1, "fixed(tag=1)"), (2, "fixed(tag=2)"), (3, "fixed(tag=3)")]
    assert first.asked == [[0, 1, 2, 3]] and second.asked == [[2, 3]] and third.asked == [[3]]
    assert never.asked == []                                   # nothing left: not asked at all
    assert chain.map_keys(_keys(["condition"] * 4), MapContext(con=None)).num_rows == 5
    mapping, who = Chain([_Fixed({}, "5")]).map_keys_by_member(_keys([]), MapContext(con=None))
    assert mapping.schema == MAPPING_SCHEMA and mapping.num_rows == 0 and who.num_rows == 0
    assert who.schema == pa.schema([pa.field("key_id", pa.int64()), pa.field("member", pa.string())])


def test_per_domain_sends_each_domain_to_its_chain_and_the_rest_to_star():
    cond, star = _Fixed({0: ["C0"], 2: ["C2"]}, "c"), _Fixed({1: ["S1"], 2: ["S2"], 3: ["S3"]}, "s")
    v = PerDomain([(["condition"], Chain([cond])), (["*"], Chain([star]))])
    ctx = MapContext(con=None)
    mapping, who = v.map_keys_by_member(_keys(["condition", "drug", "condition", "device"]), ctx)
    assert cond.contexts == [ctx] and star.contexts == [ctx] and cond.contexts[0] is ctx
    assert sorted(zip(mapping["key_id"].to_pylist(), mapping["token"].to_pylist())) == \
        [(0, "C0"), (1, "S1"), (2, "C2"), (3, "S3")]
    assert cond.asked == [[0, 2]] and star.asked == [[1, 3]]
    only = PerDomain([(["drug", "device"], Chain([_Fixed({1: ["D1"], 3: ["D3"]}, "d")]))])
    mapping, _ = only.map_keys_by_member(_keys(["condition", "drug", "condition", "device"]), MapContext(con=None))
    assert mapping["key_id"].to_pylist() == [1, 3]              # conditions matched by no part: unmapped


def test_member_output_is_checked_and_cast():
    class NoToken(Vocabulary):
        name = "notoken"

        def map_keys(self, keys, ctx):
            return pa.table({"key_id": keys.column("key_id")})
    with pytest.raises(VocabularyError) as e:
        NoToken().map_keys_by_member(_keys(["drug"]), MapContext(con=None))
    assert str(e.value) == ("vocabulary 'notoken' returned no column 'token'; map_keys must return "
                            "(key_id int64, token string)")
    m = mapping_table(pa.chunked_array([pa.array([1, 2], pa.int32())]), pa.chunked_array([pa.array(["a", None])]))
    assert m.schema == MAPPING_SCHEMA and m["key_id"].to_pylist() == [1, 2] and m["token"].to_pylist() == ["a", None]
    m = mapping_table([3], ["b"])
    assert m.schema == MAPPING_SCHEMA and m.to_pylist() == [{"key_id": 3, "token": "b"}]


def _events() -> pa.Table:
    return pa.table({"subject_id": pa.array([1, 2, 2, 3], pa.int64()),
                     "time": pa.array([dt.datetime(2020, 1, d) for d in (1, 2, 3, 4)], pa.timestamp("us")),
                     "code": ["A/1", "B/2", "A/1", "C/3"], "domain": ["condition", "drug", "condition", "device"]})


def test_events_from_a_table_or_a_directory_all_or_some_subjects(tmp_path):
    res = map_events(_events(), "source", progress=False)
    assert res.tokens["token"].to_pylist() == ["A/1", "B/2", "A/1", "C/3"] and res.extra["events_read"] == 4
    some = map_events(_events(), "source", progress=False, subjects=[2, 3])
    assert some.tokens["subject_id"].to_pylist() == [2, 2, 3] and some.extra["events_read"] == 3
    with pytest.raises(VocabularyError) as e:
        map_events(_events().drop_columns(["code", "time"]), "source", progress=False)
    assert str(e.value) == "events table: missing column(s) ['time', 'code']"
    with pytest.raises(VocabularyError) as e:
        map_events(_events().drop_columns(["code", "time", "domain", "subject_id"]).append_column("x", pa.array(
            [1] * 4)), "source", progress=False)
    assert str(e.value) == "events table: missing column(s) ['subject_id', 'time', 'code', 'domain']"
    with pytest.raises(ValueError) as e:
        map_events(_events().set_column(0, "subject_id", pa.array(["a"] * 4)), "source", progress=False)
    assert str(e.value).startswith("events table: column 'subject_id' has type string, expected int64")
    from omop_behrt.events import EVENTS_SCHEMA, PERSONS_SCHEMA, EventDir
    import pyarrow.parquet as pq
    (tmp_path / "events").mkdir()
    with pytest.raises(VocabularyError) as e:
        map_events(EventDir(tmp_path), "source", progress=False)
    assert str(e.value) == f"{tmp_path}: the event directory has no events/*.parquet files"
    t = _events()
    full = pa.table({f.name: t[f.name] if f.name in t.column_names else pa.nulls(4, f.type) for f in EVENTS_SCHEMA},
                    schema=EVENTS_SCHEMA)
    pq.write_table(full.slice(0, 2), tmp_path / "events" / "part-0.parquet")
    pq.write_table(full.slice(2), tmp_path / "events" / "part-1.parquet")
    pq.write_table(PERSONS_SCHEMA.empty_table(), tmp_path / "persons.parquet")
    d = map_events(tmp_path, "source", progress=False)
    assert d.tokens["token"].to_pylist() == ["A/1", "B/2", "A/1", "C/3"] and d.extra["events_read"] == 4
    d = map_events(EventDir(tmp_path), "source", progress=False, subjects=[1, 3])
    assert d.tokens["subject_id"].to_pylist() == [1, 3] and d.extra["events_read"] == 2


def test_builtins_without_entry_points_are_in_the_vocabulary_group(monkeypatch):
    """A source tree never pip-installed has no entry points: the built-ins stand in, in the declared group."""
    monkeypatch.setattr(metadata, "entry_points", lambda group: [])
    found = registry.available_vocabularies()
    assert sorted(found) == sorted(registry.BUILTINS)
    assert {ep.group for ep in found.values()} == {ENTRY_POINT_GROUP} == {"omop_behrt.vocabularies"}
    assert {n: ep.value for n, ep in found.items()} == registry.BUILTINS


def test_what_the_cdm_warned_reaches_the_coverage_report(tmp_path):
    """A CDM export folder with an empty file: the CDM's warning is in the mapping's report (and said once)."""
    (tmp_path / "person.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8507,1970\n")
    (tmp_path / "measurement.csv").write_text("")
    with pytest.warns(registry.VocabularyWarning):
        res = map_events(_events(), "source", progress=False, cdm=tmp_path)
    assert res.report.warnings == [f"{tmp_path}: file measurement.csv not read: empty file (not even a header row)"]
    assert map_events(_events(), "source", progress=False).report.warnings == []

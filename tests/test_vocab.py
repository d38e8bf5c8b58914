"""The vocabulary contract: map_events, the token table, composition, filters, csv tables, the entry-point
plug-in path, the min-count rule and the CLI, on the real fixtures (Eunomia, the Synthea 1k subset)."""
from __future__ import annotations

import datetime as dt
import importlib
import json
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from omop_behrt.vocab.mapping import map_events
from omop_behrt.vocab.registry import (BUILTINS, TOKENS_SCHEMA, Chain, PerDomain, Vocabulary, VocabularyError,
                              available_vocabularies, get_vocabulary)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def synthea_events(tmp_path_factory):
    """The Synthea 1k subset (101 persons) extracted into an event directory."""
    from omop_behrt.adapters import omop
    from omop_behrt.events import EventDir
    out = tmp_path_factory.mktemp("synthea_vocab_events")
    omop.extract(DATA / "synthea_omop_1k", out, progress=False)
    return EventDir.open(out)


def counts(rep) -> tuple:
    return rep.events, rep.events_mapped, rep.events_dropped, rep.events_unmapped, rep.tokens, rep.distinct_tokens


def test_source_contract(eunomia_events, tmp_path):
    res = map_events(eunomia_events, "source", progress=False)
    t = res.tokens
    assert t.schema == TOKENS_SCHEMA and res.path is None
    assert t.num_rows == 217014 and t.column("visit_id").null_count == 0
    assert t.column("token").equals(t.column("code"))
    assert counts(res.report) == (217014, 217014, 0, 0, 217014, 321)
    # sorted by subject and time: the same data always gives the same stream
    keys = pc.sort_indices(t, [("subject_id", "ascending"), ("time", "ascending"), ("visit_id", "ascending"),
                               ("domain", "ascending"), ("code", "ascending"), ("token", "ascending")])
    assert keys.equals(pa.array(range(t.num_rows), pa.uint64()))
    assert map_events(str(eunomia_events.path), "source", progress=False).tokens.equals(t)
    # written as shards instead
    res2 = map_events(eunomia_events, "source", out=tmp_path, progress=False)
    assert res2.tokens is None and res2.path == tmp_path / "tokens"
    files = sorted(res2.path.glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet"]
    assert pq.read_table(files[0]).cast(TOKENS_SCHEMA).equals(t)


@pytest.mark.parametrize("sort", ["subject", False])
def test_cheaper_orders_same_rows(eunomia_events, sort):
    """``sort="subject"`` (what pretraining's chunks by subject range need) orders by subject only, ``False`` not
    at all: the same rows as the full order either way."""
    full = map_events(eunomia_events, "source", progress=False).tokens
    t = map_events(eunomia_events, "source", progress=False, sort=sort).tokens
    keys = [(c, "ascending") for c in full.column_names]
    assert t.num_rows == full.num_rows and t.take(pc.sort_indices(t, keys)).equals(full)
    if sort == "subject":
        assert (np.diff(t["subject_id"].to_numpy()) >= 0).all()
    with pytest.raises(ValueError, match="sort must be True, False or 'subject'"):
        map_events(eunomia_events, "source", progress=False, sort="time")
    # only the columns the tokenizer reads (pretraining and embedding): the same rows, fewer columns
    cols = ["subject_id", "time", "visit_id", "token"]
    few = map_events(eunomia_events, "source", progress=False, sort=sort, columns=cols).tokens
    assert few.column_names == cols
    assert few.take(pc.sort_indices(few, [(c, "ascending") for c in cols])).equals(
        full.select(cols).take(pc.sort_indices(full.select(cols), [(c, "ascending") for c in cols])))
    for bad in (["token", "token"], ["tok"], []):
        with pytest.raises(ValueError, match="columns must be distinct names"):
            map_events(eunomia_events, "source", progress=False, columns=bad)


def test_subjects_maps_only_those_persons(eunomia_events):
    """``subjects``: the tokens of those persons only, the same rows as mapping their events filtered in Arrow."""
    whole = map_events(eunomia_events, "source", progress=False).tokens
    wanted = pc.unique(whole["subject_id"]).to_numpy()[::7]
    some = map_events(eunomia_events, "source", progress=False, subjects=wanted)
    expect = whole.filter(pc.is_in(whole["subject_id"], pa.array(wanted)))
    assert some.tokens.num_rows == expect.num_rows > 0 and some.tokens.equals(expect)
    events = eunomia_events.read_events()
    assert some.extra["events_read"] == pc.sum(pc.is_in(events["subject_id"], pa.array(wanted))).as_py()
    arrow = map_events(events, "source", progress=False, subjects=wanted)    # an Arrow table source alike
    assert arrow.tokens.equals(expect)


def test_source_code_column_and_arrow_input():
    t = pa.table({"subject_id": pa.array([1, 1, 2], pa.int64()),
                  "time": pa.array([dt.datetime(2020, 1, 1)] * 3, pa.timestamp("us")),
                  "code": ["SNOMED/1", "SNOMED/2", "SNOMED/3"], "source_code": ["ICD10CM/A00", None, "X/3"],
                  "visit_id": pa.array([None, 5, 6], pa.int64()), "domain": ["condition"] * 3})
    res = map_events(t, "source(column=source_code)", progress=False)
    assert res.tokens.column("token").to_pylist() == ["ICD10CM/A00", "X/3"]
    assert res.tokens.column("visit_id").to_pylist() == [0, 6]       # never null
    assert res.report.top_unmapped == [{"domain": "condition", "code": "SNOMED/2", "source_code": None, "events": 1}]
    res = map_events(t, "source(column=source_code),source", progress=False)
    assert res.report.by_member == {"source(column=source_code)": 2, "source": 1}


def test_spec_strings():
    v = get_vocabulary("caliber, concept ,source")
    assert isinstance(v, Chain) and v.spec() == "caliber,concept,source"
    v = get_vocabulary("condition|death=caliber(level=chapter),source; *=concept")
    assert isinstance(v, PerDomain)
    assert v.spec() == "condition|death=caliber(level=chapter),source; *=concept"
    assert get_vocabulary("drop(domain=measurement|observation)").domains == ["measurement", "observation"]
    assert get_vocabulary("caliber", level="chapter").spec() == "caliber(level=chapter)"
    for spec in ("drop(tag=finding),caliber(crosswalk=false,level=chapter),source(column=source_code)",
                 "condition=caliber,source; drug|device=concept; *=source"):
        assert get_vocabulary(get_vocabulary(spec).spec()).spec() == get_vocabulary(spec).spec()
    for bad, msg in [("nosuch", "unknown vocabulary 'nosuch'"), ("caliber(levl=x)", "unknown parameter"),
                     ("caliber(level=organ)", "level='organ'"), ("caliber(level=chapter", "unbalanced"),
                     ("conditon=caliber", "unknown domain"), ("condition=caliber; source", "names no domain"),
                     ("drop", "needs domain=..."), ("drop(domain=labs)", "unknown domain"),
                     ("ancestor", "exactly one of level"), ("csv", "needs a path"), ("", "non-empty")]:
        with pytest.raises(VocabularyError, match=msg):
            get_vocabulary(bad)


def test_composition_on_real_data(eunomia_events, synthea_events):
    rep = map_events(eunomia_events, "caliber,concept,source", progress=False).report
    assert counts(rep) == (217014, 217014, 0, 0, 260813, 306)
    assert rep.by_member == {"concept": 163768, "caliber": 53246}
    rep = map_events(synthea_events, "caliber,concept,source", progress=False).report
    assert counts(rep) == (26245, 26245, 0, 0, 27022, 490)
    assert rep.by_member == {"concept": 21968, "source": 2822, "caliber": 1455}
    # per domain: Synthea's drug rows that carry condition codes (concept_id 0) stay unmapped under concept
    rep = map_events(synthea_events, "condition=caliber,source; drug|device=concept; *=source", progress=False).report
    assert counts(rep) == (26245, 25488, 0, 757, 25747, 543)
    assert rep.by_member == {"source": 22787, "concept": 2216, "caliber": 485}
    assert {u["domain"] for u in rep.top_unmapped} == {"drug"}


def test_filters(synthea_events, tmp_path):
    rep = map_events(synthea_events, "drop(tag=finding),caliber,source", progress=False).report
    assert counts(rep) == (26245, 25873, 372, 0, 26650, 485)
    assert rep.by_member["drop(tag=finding)"] == 372
    # placed after caliber, the filter lets CALIBER keep findings it maps (BMI 30+ -> Obesity)
    rep2 = map_events(synthea_events, "caliber,drop(tag=finding),source", progress=False).report
    assert rep2.by_member["caliber"] > rep.by_member["caliber"]
    codes = tmp_path / "codes.txt"
    codes.write_text("# employment\nSNOMED/160903007\nSNOMED/160904001\n")
    res = map_events(synthea_events, f"drop(domain=measurement|visit|device),drop(codes={codes}),source",
                     progress=False)
    assert "measurement" not in set(res.tokens.column("domain").to_pylist())
    assert not set(res.tokens.column("code").to_pylist()) & {"SNOMED/160903007", "SNOMED/160904001"}
    assert res.report.events_dropped + res.report.events_mapped == res.report.events == 26245
    with pytest.raises(VocabularyError, match="VOCAB/code"):
        get_vocabulary("drop(codes=160903007)")


def test_csv_vocabulary(eunomia_events, tmp_path):
    m = tmp_path / "map.csv"
    m.write_text("source_vocabulary,source_code,token,priority\n"
                 "SNOMED,444814009,RESP/sinusitis,1\nSNOMED,444814009,RESP/any,2\n"
                 "icd10cm,K92.2,GI/bleed,1\nSNOMED,195662009,RESP/pharyngitis,1\nSNOMED,195662009,RESP/throat,1\n")
    res = map_events(eunomia_events, f"csv(path={m})", progress=False)
    by = {}
    for r in res.tokens.group_by(["code", "token"]).aggregate([("subject_id", "count")]).to_pylist():
        by[(r["code"], r["token"])] = r["subject_id_count"]
    assert by == {("SNOMED/444814009", "RESP/sinusitis"): 17268, ("SNOMED/195662009", "RESP/pharyngitis"): 10217,
                  ("SNOMED/195662009", "RESP/throat"): 10217, ("SNOMED/74474003", "GI/bleed"): 479}
    bad = tmp_path / "bad.csv"
    bad.write_text("vocabulary,source_code,token\nSNOMED,1,x\n")
    with pytest.raises(VocabularyError, match=r"bad\.csv: missing column\(s\) \['source_vocabulary'\]"):
        get_vocabulary(f"csv(path={bad})")
    bad.write_text("source_vocabulary,source_code,token,priority\nSNOMED,1,x,1\nSNOMED,2,,1\n")
    with pytest.raises(VocabularyError, match=r"bad\.csv, row 3: column 'token' is empty"):
        get_vocabulary(f"csv(path={bad})")
    bad.write_text("source_vocabulary,source_code,token,priority\nSNOMED,1,x,high\n")
    with pytest.raises(VocabularyError, match=r"row 2: column 'priority' is 'high'"):
        get_vocabulary(f"csv(path={bad})")


def test_csv_vocabulary_as_spreadsheets_save_it(tmp_path):
    """A mapping table saved by a spreadsheet: ';' (where the comma is the decimal separator), tab or '|'
    separated, with a byte order mark, reads as the comma version; one saved in Windows-1252 is one error naming
    the file and the line (a UnicodeDecodeError traceback before), and so is such a ``drop`` code list."""
    from omop_behrt.vocab.codelists import read_mapping_csv
    rows = [["source_vocabulary", "source_code", "token", "priority"], ["SNOMED", "444814009", "RESP/sinusitis", "1"],
            ["icd10cm", "K92.2", "GI/bleed; upper", "2"]]
    want = None
    for sep in (",", ";", "\t", "|"):
        m = tmp_path / "map.csv"
        m.write_text("\ufeff" + "\r\n".join(sep.join(f'"{c}"' if sep in c else c for c in r) for r in rows) + "\r\n",
                     encoding="utf-8")
        got = read_mapping_csv(m).to_pylist()
        want = want or got
        assert got == want == [{"source_vocabulary": "SNOMED", "source_code": "444814009", "token": "RESP/sinusitis",
                                "priority": 1}, {"source_vocabulary": "ICD10CM", "source_code": "K92.2",
                                                 "token": "GI/bleed; upper", "priority": 2}], sep
    m.write_bytes("source_vocabulary,source_code,token\nSNOMED,1,x\nICD10CM,H81.0,M\u00e9ni\u00e8re\n".encode("cp1252"))
    with pytest.raises(VocabularyError, match=r"map\.csv, line 3: the mapping table is not UTF-8 \(byte 0xe9"):
        get_vocabulary(f"csv(path={m})")
    codes = tmp_path / "codes.txt"
    codes.write_bytes("SNOMED/1\n# M\u00e9ni\u00e8re\n".encode("cp1252"))
    with pytest.raises(VocabularyError, match=r"codes\.txt, line 2: the code list is not UTF-8"):
        get_vocabulary(f"drop(codes={codes})")


PLUGIN = '''
import numpy as np
import pyarrow as pa
from omop_behrt.vocab.registry import Vocabulary, mapping_table


class Upper(Vocabulary):
    """Test plug-in: the code's vocabulary, upper-cased, as the token."""

    name = "upper-vocab"

    def map_keys(self, keys, ctx):
        return ctx.sql("SELECT key_id, 'UP/' || upper(code_vocab) AS token FROM k", k=keys)
'''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A real installed distribution on sys.path: a module and a dist-info declaring the entry point."""
    (tmp_path / "omop_behrt_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "omop_behrt_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: omop-behrt-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[omop_behrt.vocabularies]\nupper-vocab = omop_behrt_test_plugin:Upper\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield "upper-vocab"
    sys.modules.pop("omop_behrt_test_plugin", None)


def test_entry_point_plugin(plugin_dist, eunomia_events):
    assert plugin_dist not in BUILTINS
    ep = available_vocabularies()[plugin_dist]
    assert ep.dist is not None and ep.dist.name == "omop-behrt-test-plugin"
    assert ep in metadata.entry_points(group="omop_behrt.vocabularies")
    v = get_vocabulary(plugin_dist)
    assert isinstance(v, Vocabulary) and type(v).__module__ == "omop_behrt_test_plugin"
    rep = map_events(eunomia_events, "upper-vocab", progress=False).report
    assert counts(rep) == (217014, 217014, 0, 0, 217014, 5)
    # composes like a built-in, per domain too
    rep = map_events(eunomia_events, "condition=caliber,upper-vocab; *=source", progress=False).report
    assert rep.by_member == {"source": 151682, "caliber": 53179, "upper-vocab": 12153}


def test_builtins_are_declared_entry_points():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="omop_behrt.vocabularies")}
    assert {k: eps.get(k) for k in BUILTINS} == BUILTINS


def test_min_count_rule(eunomia_events):
    from omop_behrt.behrt.tokenizer import UNK, TokenVocabulary
    tokens = map_events(eunomia_events, "caliber", progress=False).tokens
    persons = {r["token"]: r["subject_id_count_distinct"] for r in
               tokens.group_by("token").aggregate([("subject_id", "count_distinct")]).to_pylist()}
    assert len(persons) == 33 and persons["CALIBER/Tubulo-interstitial nephritis"] == 9
    vocab = TokenVocabulary.build(tokens)                       # default min_count=10
    kept = [t for t in vocab.tokens if not t.startswith("[")]
    assert sorted(kept) == sorted(t for t, n in persons.items() if n >= 10) and len(kept) == 32
    assert vocab.encode(["CALIBER/Tubulo-interstitial nephritis"]).tolist() == [UNK]
    vocab = TokenVocabulary.build(tokens, min_count=40)
    rare = [t for t, n in persons.items() if n < 40]
    assert len(rare) == 5 and len(vocab) == 5 + 28                 # 5 specials + 28 tokens
    assert set(vocab.encode(rare).tolist()) == {UNK}
    assert len([t for t in TokenVocabulary.build(tokens, min_count=1).tokens if not t.startswith("[")]) == 33


def test_cli_report_and_map(synthea_events, tmp_path, capsys):
    from omop_behrt.cli.main import main
    out = tmp_path / "report.json"
    assert main(["vocab", "report", "--events", str(synthea_events.path), "--vocab", "caliber",
                 "--json", str(out), "--quiet", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "events        26,245: 1,455 mapped (5.5%)" in text and "top 3 unmapped codes" in text
    rep = json.loads(out.read_text())
    assert (rep["events"], rep["events_mapped"], rep["tokens"]) == (26245, 1455, 2232)
    assert rep["domains"]["condition"] == {"events": 757, "events_mapped": 485, "events_dropped": 0,
                                           "events_unmapped": 272, "codes": 102, "codes_mapped": 54, "tokens": 744}
    assert main(["vocab", "map", "--events", str(synthea_events.path), "--vocab", "caliber,source",
                 "--out", str(tmp_path / "m"), "--quiet"]) == 0
    assert pq.read_table(tmp_path / "m" / "tokens" / "part-00000.parquet").num_rows == 27022
    assert json.loads((tmp_path / "m" / "report.json").read_text())["tokens"] == 27022
    assert main(["vocab", "report", "--events", str(synthea_events.path), "--vocab", "nosuch"]) == 2
    assert "unknown vocabulary 'nosuch'" in capsys.readouterr().err


def test_cdm_vocabulary_from_an_export_folder(synthea_events):
    """The Synthea export's CONCEPT table resolves codes whose concept_id is 0 and knows more SNOMED tags."""
    cdm = DATA / "synthea_omop_1k"
    assert map_events(synthea_events, "concept", progress=False).report.events_mapped == 22453
    assert map_events(synthea_events, "concept", cdm=cdm, progress=False).report.events_mapped == 25378
    # this CONCEPT table separates 'Disorder' from 'Clinical Finding', so its classes add to the shipped tags
    assert map_events(synthea_events, "drop(tag=finding)", cdm=cdm, progress=False).report.events_dropped == 412


def test_shards_and_limits(eunomia_events, tmp_path):
    res = map_events(eunomia_events, "caliber", out=tmp_path, rows_per_shard=40_000, threads=1,
                     memory_limit="1GB", progress=False)
    files = sorted(res.path.glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == res.report.tokens == 97045
    # a second run replaces the shards, never mixes them
    res = map_events(eunomia_events, "caliber(level=chapter)", out=tmp_path, progress=False)
    assert [f.name for f in sorted(res.path.glob("part-*"))] == ["part-00000.parquet"]

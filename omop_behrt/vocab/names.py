"""Names of codes and of the data source, from the CDM's own tables: concept names and domains (concept),
CALIBER chapters of tokens, and the cdm_source row. Used by the report, Table 1 and the text serialiser, so it
needs neither matplotlib nor torch.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

#: the chapter of a token that is no CALIBER disease
NO_CHAPTER = "not a CALIBER disease"


def token_chapters(tokens: list[str], cdm=None) -> list[str]:
    """CALIBER chapter of each token: CALIBER phenotypes directly, codes through the caliber vocabulary."""
    from omop_behrt.vocab.caliber import caliber_phenotypes
    from omop_behrt.vocab.mapping import map_events
    ph = caliber_phenotypes()
    by_pheno = dict(zip(ph["phenotype"].to_pylist(), ph["chapter"].to_pylist()))
    out = [by_pheno.get(t.split("/", 1)[1], NO_CHAPTER) if t.startswith("CALIBER/") else NO_CHAPTER for t in tokens]
    codes = [t for t in tokens if "/" in t and not t.startswith("CALIBER")]
    if codes:
        ev = pa.table({"subject_id": pa.array(np.arange(len(codes)), pa.int64()),
                       "time": pa.array(np.zeros(len(codes), "datetime64[us]")),
                       "code": pa.array(codes), "domain": pa.array(["condition"] * len(codes))})
        got = map_events(ev, "caliber(level=chapter)", cdm=cdm, progress=False, sort=False).tokens
        chap = {}
        for c, t in zip(got["code"].to_pylist(), got["token"].to_pylist()):
            chap.setdefault(c, t.split("/", 1)[1])
        pos = {t: i for i, t in enumerate(tokens)}
        for c, ch in chap.items():
            out[pos[c]] = ch
    return out


def _as_cdm(cdm):
    from omop_behrt.db.cdm import OmopCdm
    return cdm if hasattr(cdm, "qtable") else OmopCdm(cdm)


def concept_details(cdm, tokens: list[str]) -> dict[str, tuple[str, str | None]]:
    """(concept name, domain_id) from the CDM's concept table for tokens shaped VOCABULARY_ID/concept_code."""
    from omop_behrt.db.database import load_sql, render
    if cdm is None:
        return {}
    cdm = _as_cdm(cdm)
    if not cdm.has_table("concept"):
        return {}
    pairs = [t.split("/", 1) for t in tokens if "/" in t]
    sql = render(load_sql("report/concept_names.sql"), {
        "concept": cdm.qtable("concept"), "c_name": cdm.col("concept", "concept_name", "c"),
        "c_domain_id": cdm.col("concept", "domain_id", "c", optional=True),
        "c_vocabulary_id": cdm.col("concept", "vocabulary_id", "c"),
        "c_concept_code": cdm.col("concept", "concept_code", "c")})
    t = cdm.db.query(sql, {"vocabs": [p[0] for p in pairs], "codes": [p[1] for p in pairs]})
    return {k: (n, d) for k, n, d in zip(t["token"].to_pylist(), t["name"].to_pylist(), t["domain"].to_pylist())}


def concept_names(cdm, tokens: list[str]) -> dict[str, str]:
    """Concept names from the CDM's concept table for tokens shaped VOCABULARY_ID/concept_code."""
    return {k: v[0] for k, v in concept_details(cdm, tokens).items() if v[0]}


def concept_names_by_id(cdm, ids: list[int]) -> dict[int, str]:
    """Concept names for OMOP concept ids (e.g. a task's outcome concepts), from the CDM's concept table."""
    from omop_behrt.db.database import load_sql, render
    if cdm is None or not ids:
        return {}
    cdm = _as_cdm(cdm)
    if not cdm.has_table("concept"):
        return {}
    sql = render(load_sql("omop/concept_names_by_id.sql"), {
        "concept": cdm.qtable("concept"), "c_name": cdm.col("concept", "concept_name", "c"),
        "c_concept_id": cdm.col("concept", "concept_id", "c")})
    t = cdm.db.query(sql, {"ids": [int(i) for i in ids]})
    return dict(zip(t["concept_id"].to_pylist(), t["name"].to_pylist()))


#: cdm_source columns the report shows, in order
CDM_SOURCE_COLUMNS = ("cdm_source_name", "cdm_source_abbreviation", "cdm_holder", "source_release_date",
                      "cdm_release_date", "cdm_version", "vocabulary_version")


def data_source(cdm) -> dict[str, str]:
    """The CDM's cdm_source row (name, holder, release dates, CDM and vocabulary versions), any column case."""
    if cdm is None:
        return {}
    cdm = _as_cdm(cdm)
    out = {c: cdm.cdm_source_value(c) for c in CDM_SOURCE_COLUMNS}
    out = {k: v for k, v in out.items() if v not in (None, "")}
    out.setdefault("cdm_version", cdm.cdm_version)
    return out

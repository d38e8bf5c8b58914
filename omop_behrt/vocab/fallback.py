"""A foreign model at a new site: each token the model never saw falls back to its nearest ancestor it did see.

A model pretrained at one site knows only the tokens seen there in >= min_count persons; at another site the
rest would all become [UNK]. The fallback replaces such a token by the nearest ancestor token the model knows:

- OMOP concepts (``VOCAB/code`` or ``OMOP/<id>`` tokens), with a CDM at hand: the ancestor in the CDM's
  concept_ancestor with the smallest min_levels_of_separation whose token the model knows;
- ICD-like codes (``ICD10CM/I21.4``, ``ICD9CM/410.71``, ``OPCS4/K40.1``, ...): the longest prefix the model
  knows (``ICD10CM/I21`` before ``ICD10CM/I2``), a trailing dot dropped;
- CALIBER phenotypes (``CALIBER/<phenotype>``): the phenotype's chapter, when the vocabulary has chapters.

Rules in that order; within one, the nearest ancestor, ties to the model's more frequent token. The work is
on the distinct unknown tokens only (a few DuckDB joins), then one Arrow hash lookup over the token rows.
:func:`coverage` counts the token rows (one per event and token) the model covers as they are, through the
fallback, and not at all ([UNK]): aggregates only, counts below ``min_count`` suppressed.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from omop_behrt.behrt.tokenizer import TokenVocabulary
from omop_behrt.db.database import quiet

#: Vocabularies whose codes nest by prefix (a shorter code is the broader category).
PREFIX_VOCABS = ("ICD10CM", "ICD10", "ICD9CM", "ICD9", "ICD10PCS", "ICD9Proc", "ICD10GM", "ICD10CN", "ICD10CA",
                 "OPCS4")

MAPPING_SCHEMA = pa.schema([("token", pa.string()), ("fallback", pa.string()), ("rule", pa.string())])
RULES = ("concept_ancestor", "icd_prefix", "caliber_chapter")


def unknown_tokens(tokens: pa.Array | pa.ChunkedArray, vocab: TokenVocabulary) -> pa.Array:
    """The distinct non-null tokens of ``tokens`` that ``vocab`` lacks."""
    distinct = pc.unique(tokens.drop_null() if hasattr(tokens, "drop_null") else tokens)
    if isinstance(distinct, pa.ChunkedArray):
        distinct = distinct.combine_chunks()
    return distinct.filter(pc.invert(pc.is_in(distinct, value_set=vocab.index)))


def _known(vocab: TokenVocabulary) -> pa.Table:
    return pa.table({"token": vocab.index, "id": pa.array(np.arange(len(vocab)), pa.int64())})


def _concept_candidates(con, unknown: pa.Table, cdm: Any) -> pa.Table:
    """(token, candidate, distance) from concept_ancestor: every known-or-not ancestor token of each concept."""
    from omop_behrt.vocab.concepts import ancestors, concept_rows
    parsed = con.sql("""
        SELECT token, split_part(token, '/', 1) AS voc, substr(token, length(split_part(token, '/', 1)) + 2) AS code
        FROM u WHERE contains(token, '/') AND split_part(token, '/', 1) NOT IN ('CALIBER', 'CALIBER_CHAPTER')
        """).to_arrow_table()
    con.register("parsed", parsed)
    ids = con.execute("SELECT DISTINCT TRY_CAST(code AS BIGINT) FROM parsed WHERE voc = 'OMOP' AND "
                      "TRY_CAST(code AS BIGINT) IS NOT NULL").fetchall()
    codes = con.execute("SELECT DISTINCT code FROM parsed WHERE voc <> 'OMOP'").fetchall()
    if not ids and not codes:
        return pa.table({"token": pa.array([], pa.string()), "candidate": pa.array([], pa.string()),
                         "distance": pa.array([], pa.int64())})
    con.register("c", concept_rows(cdm, [r[0] for r in ids], [r[0] for r in codes]))
    own = con.sql("""
        SELECT DISTINCT p.token, c.concept_id FROM parsed p JOIN c
          ON (p.voc = 'OMOP' AND TRY_CAST(p.code AS BIGINT) = c.concept_id)
          OR (p.voc = c.vocabulary_id AND p.code = c.concept_code)""").to_arrow_table()
    con.register("own", own)
    anc = ancestors(cdm, sorted(set(own.column("concept_id").to_pylist())))
    con.register("a", anc)
    anc_ids = sorted(set(anc.column("ancestor_concept_id").to_pylist()))
    con.register("ac", concept_rows(cdm, anc_ids, []))
    return con.sql("""
        SELECT own.token, coalesce(ac.vocabulary_id || '/' || ac.concept_code, 'OMOP/' || a.ancestor_concept_id)
                 AS candidate, a.min_levels_of_separation AS distance
        FROM own JOIN a ON a.descendant_concept_id = own.concept_id AND a.min_levels_of_separation > 0
        LEFT JOIN ac ON ac.concept_id = a.ancestor_concept_id""").to_arrow_table()


def fallback_map(unknown: pa.Array, vocab: TokenVocabulary, cdm: Any = None) -> pa.Table:
    """(token, fallback, rule): for each unknown token that has one, its nearest ancestor token ``vocab`` knows.

    ``cdm`` (an :class:`omop_behrt.db.cdm.OmopCdm`) enables the concept_ancestor rule; without it only the prefix
    and CALIBER rules apply.
    """
    from omop_behrt.vocab.caliber import caliber_phenotypes
    if len(unknown) == 0:
        return MAPPING_SCHEMA.empty_table()
    con = quiet(duckdb.connect())
    try:
        con.register("u", pa.table({"token": unknown}))
        con.register("k", _known(vocab))
        parts = ["""
            SELECT token, voc || '/' || rtrim(left(code, n), '.') AS candidate, length(code) - n AS distance,
                   2 AS rank
            FROM (SELECT token, split_part(token, '/', 1) AS voc,
                         substr(token, length(split_part(token, '/', 1)) + 2) AS code FROM u
                  WHERE contains(token, '/') AND list_contains(?, split_part(token, '/', 1))) s,
                 generate_series(1, greatest(length(code) - 1, 0)) g(n)"""]
        params: list = [list(PREFIX_VOCABS)]
        if pc.any(pc.starts_with(unknown, "CALIBER/")).as_py():
            con.register("ph", caliber_phenotypes())
            parts.append("""
            SELECT u.token, 'CALIBER_CHAPTER/' || ph.chapter AS candidate, 1 AS distance, 3 AS rank
            FROM u JOIN ph ON u.token = 'CALIBER/' || ph.phenotype""")
        if cdm is not None and cdm.has_table("concept_ancestor") and cdm.has_table("concept"):
            con.register("cc", _concept_candidates(con, unknown, cdm))
            parts.append("SELECT token, candidate, distance, 1 AS rank FROM cc")
        rows = con.sql(f"""
            WITH cand AS ({' UNION ALL '.join(parts)})
            SELECT cand.token, arg_min(candidate, (rank, distance, k.id)) AS fallback,
                   arg_min(rank, (rank, distance, k.id)) AS rank
            FROM cand JOIN k ON k.token = cand.candidate
            GROUP BY cand.token ORDER BY cand.token""", params=params).to_arrow_table()
    finally:
        con.close()
    rule = pc.take(pa.array(RULES), pc.subtract(rows.column("rank").cast(pa.int64()), 1))
    return pa.table({"token": rows.column("token"), "fallback": rows.column("fallback"), "rule": rule},
                    schema=MAPPING_SCHEMA)


def replace(tokens: pa.Table, mapping: pa.Table) -> pa.Table:
    """``tokens`` with each token that ``mapping`` lists replaced by its fallback (same rows, same order)."""
    if mapping.num_rows == 0:
        return tokens
    col = tokens.column("token")
    pos = pc.index_in(col, value_set=mapping.column("token"))
    new = pc.coalesce(pc.take(mapping.column("fallback"), pos), col)
    return tokens.set_column(tokens.schema.get_field_index("token"), "token", new)


def token_counts(tokens: "pa.Table | ds.Dataset", cutoff: pa.Table | None = None) -> pa.Table:
    """One pass over token rows (subject_id, time, token): per distinct token, its rows (``n_all``) and those
    before their subject's latest cut in ``cutoff`` (``n``; every row without a cutoff). Coverage and the
    fallback's distinct tokens then work on these few thousand rows, not on the token rows again."""
    con = quiet(duckdb.connect())
    try:
        con.register("t", tokens.select(["subject_id", "time", "token"]) if isinstance(tokens, pa.Table) else tokens)
        join, before = "", "true"
        if cutoff is not None:
            con.register("c", cutoff.select(["subject_id", "index_time"]))
            join = ("LEFT JOIN (SELECT subject_id, max(index_time) AS cut FROM c GROUP BY subject_id) c "
                    "ON c.subject_id = t.subject_id")
            before = "t.time < c.cut"
        return con.sql(f"SELECT t.token, count(*) AS n_all, count(*) FILTER (WHERE {before}) AS n "
                       f"FROM t {join} GROUP BY t.token").to_arrow_table()
    finally:
        con.close()


def coverage(tokens: "pa.Table | ds.Dataset", vocab: TokenVocabulary, mapping: pa.Table | None, *,
             cutoff: pa.Table | None = None, fallback: bool = True, min_count: int | None = None,
             counts: pa.Table | None = None) -> dict:
    """Token rows of the site (before each subject's latest cut in ``cutoff``, when given) the model covers
    as they are, through the fallback and not at all ([UNK]): counts and shares, per fallback rule too.

    ``tokens`` (subject_id, time, token) is the site's token table *before* :func:`replace` (or ``counts``,
    its :func:`token_counts` already made). Counts below ``min_count`` (default the vocabulary's) are None, and
    so are their shares: aggregates only.
    """
    min_count = vocab.min_count if min_count is None else min_count
    counts = token_counts(tokens, cutoff) if counts is None else counts
    mapping = mapping if mapping is not None else MAPPING_SCHEMA.empty_table()
    token, rows = counts.column("token"), counts.column("n").to_numpy(zero_copy_only=False)
    known = pc.is_in(token, value_set=vocab.index).to_numpy(zero_copy_only=False)
    rule = pc.take(mapping.column("rule"), pc.index_in(token, value_set=mapping.column("token")))

    def rows_of(r: str) -> int:
        return int(rows[~known & pc.fill_null(pc.equal(rule, r), False).to_numpy(zero_copy_only=False)].sum())

    total = int(rows.sum())
    by_rule = {r: rows_of(r) for r in RULES}
    status = {"in_model": int(rows[known].sum()), "fallback": sum(by_rule.values())}
    status["unknown"] = total - status["in_model"] - status["fallback"]

    def shown(c: int) -> int | None:
        return c if c == 0 or c >= min_count else None

    out = {"unit": "token rows (one per event and token)", "fallback_enabled": bool(fallback),
           "events": shown(total), "min_count": min_count}
    for name, c in status.items():
        out[name] = shown(c)
        out[f"share_{name}"] = round(c / total, 4) if total and shown(c) is not None else None
    out["fallback_by_rule"] = {r: shown(c) for r, c in by_rule.items()}
    return out


@contextlib.contextmanager
def vocabulary_cdm(cdm: Any, cdm_schema: str | None = None, vocab_schema: str | None = None) -> Iterator[Any]:
    """An :class:`omop_behrt.db.cdm.OmopCdm` for the concept rule: ``cdm`` itself, one opened (and closed) from a
    path or URL, or None."""
    if cdm is None or hasattr(cdm, "qtable"):
        yield cdm
        return
    from omop_behrt.db.cdm import OmopCdm
    opened = OmopCdm(cdm, cdm_schema=cdm_schema, vocab_schema=vocab_schema)
    try:
        yield opened
    finally:
        opened.db.close()


def apply(tokens: pa.Table, vocab: TokenVocabulary, *, cdm: Any = None, fallback: bool = True,
          cutoff: pa.Table | None = None) -> tuple[pa.Table, dict, pa.Table]:
    """The fallback over a token table in one pass: (tokens with fallbacks, coverage, the mapping used)."""
    if fallback:
        with vocabulary_cdm(cdm) as c:
            mapping = fallback_map(unknown_tokens(tokens.column("token"), vocab), vocab, c)
    else:
        mapping = MAPPING_SCHEMA.empty_table()
    cov = coverage(tokens, vocab, mapping, cutoff=cutoff, fallback=fallback)
    return replace(tokens, mapping), cov, mapping


def site_fallback(tokens: ds.Dataset, vocab: TokenVocabulary, subject_id: np.ndarray, cut: np.ndarray, *,
                  cdm: Any = None, cdm_schema: str | None = None, vocab_schema: str | None = None,
                  fallback: bool = True) -> tuple[pa.Table, dict]:
    """One pass over a site's token shards (an embedding run): the fallback mapping of its distinct unknown
    tokens and the coverage of the events before each subject's latest cut (µs)."""
    cutoff = pa.table({"subject_id": pa.array(subject_id, pa.int64()), "index_time": pa.array(cut, pa.timestamp("us"))})
    counts = token_counts(tokens, cutoff)
    mapping = MAPPING_SCHEMA.empty_table()
    if fallback:
        with vocabulary_cdm(cdm, cdm_schema, vocab_schema) as c:
            mapping = fallback_map(unknown_tokens(counts.column("token"), vocab), vocab, c)
    return mapping, coverage(None, vocab, mapping, fallback=fallback, counts=counts)


def coverage_line(cov: dict) -> str:
    """One line for a person: what share of the site's events the model covers."""
    def pct(k: str) -> str:
        v = cov.get(f"share_{k}")
        return "<suppressed>" if v is None else f"{100 * v:.2f}%"
    how = "" if cov.get("fallback_enabled") else " (fallback off)"
    total = cov.get("events")
    return (f"model coverage of the site's events{how}: {pct('in_model')} as they are, {pct('fallback')} through "
            f"a known ancestor, {pct('unknown')} [UNK]; "
            + (f"{total:,} token rows" if total is not None else "few token rows"))

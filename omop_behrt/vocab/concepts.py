"""The OMOP vocabularies: ``concept`` (standard concepts) and ``ancestor`` (roll-up through concept_ancestor).

Both read the CDM's vocabulary tables (concept, concept_relationship, concept_ancestor) for the distinct
codes only: the ids and codes of the keys are bound as a list parameter, the few thousand rows that come
back are joined to the keys locally in DuckDB.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.db.database import load_sql, render
from omop_behrt.vocab.registry import MapContext, Vocabulary, VocabularyError

_CONCEPT_SCHEMA = pa.schema([("concept_id", pa.int64()), ("vocabulary_id", pa.string()),
                             ("concept_code", pa.string()), ("standard_concept", pa.string())])
_PAIR_SCHEMA = pa.schema([("concept_id_1", pa.int64()), ("concept_id_2", pa.int64())])
_ANCESTOR_SCHEMA = pa.schema([("ancestor_concept_id", pa.int64()), ("descendant_concept_id", pa.int64()),
                              ("min_levels_of_separation", pa.int64())])


def _in_list(cdm: Any, expr: str, param: str) -> str:
    """``expr`` is one of the values of the list bound as ``:param`` (DuckDB and PostgreSQL spellings)."""
    return f"list_contains(:{param}, {expr})" if cdm.db.dialect == "duckdb" else f"{expr} = ANY(:{param})"


def concept_rows(cdm: Any, ids: list[int], codes: list[str]) -> pa.Table:
    """concept rows (id, vocabulary, code, standard flag) whose id is in ``ids`` or whose code is in ``codes``."""
    c = "concept"
    sql = render(load_sql("vocab/concept_rows.sql"), {
        "concept": cdm.qtable(c), "concept_id": cdm.col(c, "concept_id"),
        "vocabulary_id": cdm.col(c, "vocabulary_id"), "concept_code": cdm.col(c, "concept_code"),
        "standard_concept": cdm.col(c, "standard_concept", optional=True),
        "id_in": _in_list(cdm, cdm.col(c, "concept_id"), "ids"),
        "code_in": _in_list(cdm, f"CAST({cdm.col(c, 'concept_code')} AS VARCHAR)", "codes")})
    t = cdm.db.query(sql, {"ids": [int(i) for i in ids] or [-1], "codes": list(codes) or [""]})
    return t.cast(_CONCEPT_SCHEMA) if t.num_rows else _CONCEPT_SCHEMA.empty_table()


def maps_to(cdm: Any, ids: list[int]) -> pa.Table:
    """Valid 'Maps to' pairs (concept_id_1 -> concept_id_2) leaving the given concepts."""
    r = "concept_relationship"
    if not cdm.has_table(r) or not ids:
        return _PAIR_SCHEMA.empty_table()
    sql = render(load_sql("vocab/maps_to.sql"), {
        "concept_relationship": cdm.qtable(r), "concept_id_1": cdm.col(r, "concept_id_1"),
        "concept_id_2": cdm.col(r, "concept_id_2"), "relationship_id": cdm.col(r, "relationship_id"),
        "invalid_reason": cdm.col(r, "invalid_reason", optional=True),
        "id_in": _in_list(cdm, cdm.col(r, "concept_id_1"), "ids")})
    t = cdm.db.query(sql, {"ids": [int(i) for i in ids]})
    return t.cast(_PAIR_SCHEMA) if t.num_rows else _PAIR_SCHEMA.empty_table()


def ancestors(cdm: Any, ids: list[int]) -> pa.Table:
    """concept_ancestor rows whose descendant is one of ``ids`` (each concept is its own ancestor at level 0)."""
    a = "concept_ancestor"
    if not cdm.has_table(a):
        raise VocabularyError(f"vocabulary 'ancestor' needs the CDM table {cdm.vocab_schema}.concept_ancestor, "
                              f"which {cdm.db.description} lacks (load the Athena vocabulary)")
    if not ids:
        return _ANCESTOR_SCHEMA.empty_table()
    sql = render(load_sql("vocab/ancestors.sql"), {
        "concept_ancestor": cdm.qtable(a), "ancestor": cdm.col(a, "ancestor_concept_id"),
        "descendant": cdm.col(a, "descendant_concept_id"), "levels": cdm.col(a, "min_levels_of_separation"),
        "id_in": _in_list(cdm, cdm.col(a, "descendant_concept_id"), "ids")})
    t = cdm.db.query(sql, {"ids": [int(i) for i in ids]})
    return t.cast(_ANCESTOR_SCHEMA) if t.num_rows else _ANCESTOR_SCHEMA.empty_table()


def ancestor_table_empty(cdm: Any) -> bool:
    """Whether the CDM's concept_ancestor holds no row at all (a header-only export gives a typed empty table)."""
    sql = render(load_sql("vocab/ancestor_any.sql"), {"concept_ancestor": cdm.qtable("concept_ancestor")})
    return cdm.db.query(sql).num_rows == 0


def standard_concepts(keys: pa.Table, ctx: MapContext) -> tuple[pa.Table, pa.Table]:
    """(key_id, concept_id): the standard concept(s) of each key, best evidence first; and the concept rows
    read on the way (CONCEPT rows of the keys' ids and codes; empty without a CDM), for :func:`concept_tokens`.

    Without a CDM: the event's concept_id (the adapter already resolved it). With one: concept_id, then
    source_concept_id, then the code and the source code looked up as (vocabulary_id, concept_code); a
    standard concept is kept as it is, a non-standard one follows 'Maps to' (possibly to several concepts).
    """
    if ctx.cdm is None:
        return (ctx.sql("SELECT key_id, concept_id FROM k WHERE concept_id IS NOT NULL AND concept_id <> 0",
                        k=keys), _CONCEPT_SCHEMA.empty_table())
    ids = set(keys.column("concept_id").drop_null().to_pylist()) | set(
        keys.column("source_concept_id").drop_null().to_pylist())
    codes = set(keys.column("code_value").drop_null().to_pylist()) | set(
        keys.column("source_value").drop_null().to_pylist())
    conc = concept_rows(ctx.cdm, sorted(ids), sorted(codes))
    links = maps_to(ctx.cdm, conc.filter(pc.is_null(conc.column("standard_concept")))
                    .column("concept_id").to_pylist())
    return ctx.sql(load_sql("vocab/standard_concepts.sql"), k=keys, c=conc, r=links), conc


def concept_tokens(ctx: MapContext, pairs: pa.Table, keys: pa.Table, column: str = "concept_id",
                   known: pa.Table | None = None) -> pa.Table:
    """(key_id, token): token = VOCABULARY_ID/concept_code of ``column``; where the CDM's concept table lacks
    the row, the key's own code when it is the key's own concept, else ``OMOP/<concept_id>``.

    ``known``: concept rows already read (from :func:`standard_concepts`); only the ids they lack are read.
    """
    conc = known if known is not None else _CONCEPT_SCHEMA.empty_table()
    if ctx.cdm is not None:
        ids = set(pairs.column(column).drop_null().to_pylist()) - set(conc.column("concept_id").to_pylist())
        if ids:
            conc = pa.concat_tables([conc, concept_rows(ctx.cdm, sorted(ids), [])])
    return ctx.sql(render(load_sql("vocab/concept_tokens.sql"), {"id": column}), p=pairs, c=conc,
                   k=keys.select(["key_id", "code", "concept_id"]))


class Concept(Vocabulary):
    """OMOP standard concepts as ``VOCABULARY_ID/concept_code``; source codes resolved by 'Maps to' with a CDM."""

    name = "concept"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._check_params([])

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        std, conc = standard_concepts(keys, ctx)
        if ctx.cdm is None:   # the event's code already is the standard concept's VOCAB/code
            return ctx.sql("SELECT k.key_id, k.code AS token FROM k SEMI JOIN s ON s.key_id = k.key_id",
                           k=keys, s=std)
        return concept_tokens(ctx, std, keys, known=conc)


class Ancestor(Vocabulary):
    """Roll-up through concept_ancestor: to ``level`` N below the top of each concept's hierarchy (the
    ancestors at min_levels_of_separation = depth - N, depth = the largest min_levels_of_separation to any
    ancestor; shallower concepts stay as they are) or to the nearest of a given set ``ancestors``
    (``|``-separated concept ids or a file of them; concepts under none of them are unmapped)."""

    name = "ancestor"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._check_params(["level", "ancestors"])
        if ("level" in self.params) == ("ancestors" in self.params):
            raise VocabularyError("vocabulary 'ancestor' needs exactly one of level=N (depth below the top "
                                  "concepts) or ancestors=ID|ID|... (a concept id list or a file of ids)")
        self.level: int | None = None
        self.targets: list[int] = []
        if "level" in self.params:
            try:
                self.level = int(self.params["level"])
            except ValueError:
                raise VocabularyError(f"vocabulary 'ancestor': level={self.params['level']!r}; expected a "
                                      f"non-negative integer") from None
            if self.level < 0:
                raise VocabularyError(f"vocabulary 'ancestor': level={self.level}; expected >= 0")
        else:
            self.targets = _concept_ids(self.params["ancestors"])

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        if ctx.cdm is None:
            raise VocabularyError("vocabulary 'ancestor' needs a CDM with concept_ancestor: pass cdm=... "
                                  "(or --cdm on the command line)")
        std, conc = standard_concepts(keys, ctx)
        anc = ancestors(ctx.cdm, sorted(set(std.column("concept_id").to_pylist())))
        if anc.num_rows == 0 and ancestor_table_empty(ctx.cdm):
            ctx.warn(f"vocabulary {self.spec()!r}: {ctx.cdm.vocab_schema}.concept_ancestor in "
                     f"{ctx.cdm.db.description} is empty, so nothing rolls up: "
                     + ("every concept stays as it is (the tokens of 'concept')" if self.level is not None
                        else "no concept is under the given ancestors (all unmapped)")
                     + "; load the Athena vocabulary's CONCEPT_ANCESTOR")
        if self.level is None:
            rolled = ctx.sql(load_sql("vocab/ancestor_set.sql"), s=std, a=anc,
                             t=pa.table({"concept_id": pa.array(self.targets, pa.int64())}))
        else:
            rolled = ctx.sql(render(load_sql("vocab/ancestor_level.sql"), {"level": str(int(self.level))}),
                             s=std, a=anc)
        return concept_tokens(ctx, rolled, keys, "ancestor_id", known=conc)


def _concept_ids(value: str) -> list[int]:
    p = Path(value)
    text = p.read_text() if p.exists() else value.replace("|", " ")
    try:
        return [int(x) for x in text.replace(",", " ").split() if not x.startswith("#")]
    except ValueError:
        raise VocabularyError(f"vocabulary 'ancestor': ancestors={value[:60]!r}; expected concept ids "
                              f"separated by '|' or a file of them") from None

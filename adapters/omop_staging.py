"""The joins every OMOP table's events share (person status, observation gaps, the concepts in use), staged once
per extraction as temporary tables of an in-process DuckDB instead of once inside each table's query."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from omop_behrt.adapters.omop_queries import EventTable, ExtractOptions, _op_cols, person_status_sql
from omop_behrt.db.cdm import OmopCdm
from omop_behrt.db.cdm_exports import CSV_SUFFIXES
from omop_behrt.db.database import load_sql, quote, render


def staged_sql(cdm: OmopCdm, options: ExtractOptions) -> tuple[tuple[str, dict], str]:
    """The person status (with its bind parameters) and observation gaps queries every table's events join:
    made into tables once for :func:`events_sql`'s ``staged``."""
    return person_status_sql(cdm, options), render(load_sql("omop/observation_gaps.sql"), _op_cols(cdm))


#: a CSV concept export up to this size is staged whole: one read of it is cheaper than reading every clinical CSV
#: for the concepts in use (a text export has no column to read alone: 14.5 of 64 s at 50k persons)
WHOLE_CONCEPT_CSV_BYTES = 256 << 20


def used_concepts_sql(cdm: OmopCdm, specs: Sequence[EventTable]) -> str | None:
    """The concept rows that the tables ``specs`` name as standard, source or unit concept (used_concepts.sql), or
    every concept row of a small CSV concept export; None without a concept table or a concept column."""
    ids = [f"SELECT {cdm.cast(cdm.col(s.table, c, 'e'), 'BIGINT')} AS id FROM {cdm.qtable(s.table)} e"
           for s in specs for c in (s.concept, s.source_concept, s.unit[0] if s.unit else None)
           if c and c in cdm.columns(s.table)]
    if not ids or not cdm.has_table("concept"):
        return None
    frag = {"concept_table": cdm.qtable("concept"), "c_concept_id": cdm.col("concept", "concept_id"),
            "c_vocabulary_id": cdm.col("concept", "vocabulary_id"),
            "c_concept_code": cdm.col("concept", "concept_code"),
            "c_concept_name": cdm.col("concept", "concept_name", "c", optional=True), "ids": " UNION ALL ".join(ids)}
    files = cdm.db.files.get("concept", [])
    if files and all(f.name.lower().endswith(CSV_SUFFIXES) for f in files) \
            and sum(f.stat().st_size for f in files) <= WHOLE_CONCEPT_CSV_BYTES:
        frag["ids"] = f"SELECT c.{frag['c_concept_id']} AS id FROM {frag['concept_table']} c"
    return render(load_sql("omop/used_concepts.sql"), frag)


#: the temporary tables of staged_joins: person status, observation gaps, the concepts the tables name
STAGED_JOINS = ("omop_behrt_person_status", "omop_behrt_observation_gaps", "omop_behrt_concepts")


@contextmanager
def staged_joins(cdm: OmopCdm, options: ExtractOptions, wanted: bool = True,
                 specs: Sequence[EventTable] = ()) -> Iterator[tuple[str, str, str | None] | None]:
    """The person status and observation gaps every table's events join, and the concepts the tables ``specs``
    name, made once as temporary tables of an in-process DuckDB (not once per table inside its query); None for a
    server, whose calls do not share one connection's temporary tables. Staging the concepts costs a scan of the
    tables' concept columns (nothing measurable on Eunomia x50, 442 concepts) and saves joining a site's whole
    vocabulary three times per table (Eunomia x50 with 6M concepts: staging 15.5 -> 8 s)."""
    if not wanted or cdm.db.duck is None:
        yield None
        return
    (status, params), gaps = staged_sql(cdm, options)
    concepts = used_concepts_sql(cdm, specs)
    try:
        cdm.db.execute(f"CREATE OR REPLACE TEMP TABLE {quote(STAGED_JOINS[0])} AS {status}", params)
        cdm.db.execute(f"CREATE OR REPLACE TEMP TABLE {quote(STAGED_JOINS[1])} AS {gaps}")
        if concepts is not None:
            cdm.db.execute(f"CREATE OR REPLACE TEMP TABLE {quote(STAGED_JOINS[2])} AS {concepts}")
        yield (*STAGED_JOINS[:2], STAGED_JOINS[2] if concepts is not None else None)
    finally:
        for t in STAGED_JOINS:
            cdm.db.duck.execute(f"DROP TABLE IF EXISTS temp.{quote(t)}").fetchall()

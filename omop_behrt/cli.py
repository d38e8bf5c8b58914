"""The ``omop-behrt`` command line: one subcommand per pipeline stage, thin wrappers over the Python API.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares it, ``_run_<name>(args)`` runs it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from . import __version__
from .database import SourceError
from .events import EventSchemaError


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


# -- extract ---------------------------------------------------------------------------------------
def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="read an OMOP CDM (or FHIR data) into an event directory",
                       description="Read an OMOP CDM into the canonical event stream (Parquet). The SQL runs "
                                   "inside the source database and streams back in Arrow batches.")
    p.add_argument("--source", required=True,
                   help="DuckDB file, SQLAlchemy URL (postgresql://user@host/db) or folder of CSV/Parquet exports")
    p.add_argument("--out", required=True, help="event directory to write")
    p.add_argument("--cdm-schema", help="schema holding the CDM tables (default: main / public)")
    p.add_argument("--vocab-schema", help="schema holding concept & co. (default: the CDM schema)")
    p.add_argument("--results-schema", help="schema holding the cohort table (default: the CDM schema)")
    p.add_argument("--person-ids", type=_ids, help="only these persons (comma separated, or a file of ids)")
    p.add_argument("--cohort-id", type=int, help="only the subjects of this cohort_definition_id")
    p.add_argument("--cohort-table", default="cohort", help="cohort table name in the results schema")
    p.add_argument("--start", type=_date, help="only events on or after this date")
    p.add_argument("--end", type=_date, help="only events before this date")
    p.add_argument("--domains", help="comma-separated subset of: visit,condition,drug,procedure,measurement,"
                                     "observation,device,death")
    p.add_argument("--resume", action="store_true", help="skip tables a previous, interrupted run finished")
    p.add_argument("--json", dest="json_out", help="also write the summary as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_extract(args) -> int:
    from .adapters import omop
    options = omop.ExtractOptions(person_ids=args.person_ids, cohort_id=args.cohort_id,
                                  cohort_table=args.cohort_table, start=args.start, end=args.end,
                                  domains=args.domains.split(",") if args.domains else None)
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
    p = sub.add_parser("to-meds", help="write an event directory as a MEDS 0.4 dataset")
    p.add_argument("--events", required=True, help="event directory")
    p.add_argument("--out", required=True, help="MEDS dataset directory to write")
    p.add_argument("--name", default=None, help="dataset_name for metadata/dataset.json")
    p = sub.add_parser("from-meds", help="read a MEDS dataset into an event directory")
    p.add_argument("--meds", required=True, help="MEDS dataset directory")
    p.add_argument("--out", required=True, help="event directory to write")


def _run_to_meds(args) -> int:
    from .adapters.meds import to_meds
    info = to_meds(args.events, args.out, dataset_name=args.name)
    print(f"MEDS dataset written to {args.out}: {info['subjects']:,} subjects, {info['rows']:,} rows")
    return 0


def _run_from_meds(args) -> int:
    from .adapters.meds import from_meds
    d = from_meds(args.meds, args.out)
    print(f"event directory written to {d.path}: {d.persons().num_rows:,} persons, "
          f"{d.events().count_rows():,} events")
    return 0


# -- demo ------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the pipeline on the bundled Eunomia CDM (no arguments needed)")
    p.add_argument("--out", default="omop-behrt-demo", help="working directory (default: ./omop-behrt-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_demo(args) -> int:
    from .demo import run_demo
    return run_demo(Path(args.out), progress=not args.quiet)


# -- pretrain --------------------------------------------------------------------------------------
def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a BEHRT encoder (masked LM, optional PLOS) on an event directory",
                       description="Tokenise an event directory (vocabulary from training persons only) and "
                                   "pretrain a BEHRT encoder; --out becomes a model directory.")
    p.add_argument("--events", required=True, help="event directory (from `omop-behrt extract`)")
    p.add_argument("--vocab", default="source", help="token vocabulary (source, concept, caliber, ...)")
    p.add_argument("--out", required=True, help="model directory to write (checkpoints and metrics too)")
    p.add_argument("--config", default="tiny", help="tiny, behrt (the paper's shape) or a config.json")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training persons (default 10)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per batch (default 16384; 4096 for tiny)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--plos", action="store_true", help="add Med-BERT's prolonged-length-of-stay objective")
    p.add_argument("--sex", action="store_true", help="add a sex embedding")
    p.add_argument("--min-count", type=int, default=10, help="keep tokens seen in at least this many persons")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_pretrain(args) -> int:
    from .pretrain import pretrain
    res = pretrain(args.events, vocab=args.vocab, out=args.out, config=args.config, epochs=args.epochs,
                   max_steps=args.max_steps, batch_tokens=args.batch_tokens, lr=args.lr, plos=args.plos,
                   sex=args.sex, min_count=args.min_count, seed=args.seed, device=args.device,
                   compile=args.compile, checkpoint_every=args.checkpoint_every, resume=args.resume,
                   threads=args.threads, progress=not args.quiet)
    print(json.dumps(res, indent=2))
    print(f"model directory: {args.out}")
    return 0


COMMANDS = {"extract": _run_extract, "to-meds": _run_to_meds, "from-meds": _run_from_meds, "demo": _run_demo,
            "pretrain": _run_pretrain}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omop-behrt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"omop-behrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_extract(sub)
    _add_meds(sub)
    _add_demo(sub)
    _add_pretrain(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SourceError, EventSchemaError, FileNotFoundError, ValueError) as e:
        print(f"omop-behrt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

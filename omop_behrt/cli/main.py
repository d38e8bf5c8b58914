"""The ``omop-behrt`` command line: one subcommand per pipeline stage, thin wrappers over the Python API.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares it, ``_run_<name>(args)`` runs it; they live in
the stage's module (:mod:`~omop_behrt.cli.data`, :mod:`~omop_behrt.cli.cohort`, :mod:`~omop_behrt.cli.encoder`,
:mod:`~omop_behrt.cli.evaluate`, :mod:`~omop_behrt.cli.benchmark`), the demo and study here. Building the parser
imports nothing heavy (``omop-behrt --help`` starts at once): choices and defaults come from
:mod:`omop_behrt.choices`, and each ``_run_<name>`` imports what its command needs.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from pathlib import Path

from omop_behrt.cli import cohort, data, encoder
from omop_behrt.cli.evaluate import COMMANDS as _EVAL_COMMANDS, add_parsers as _add_eval_parsers
from omop_behrt.cli.options import Parser, shown_default  # noqa: F401  (shown_default: re-exported)


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


COMMANDS = {**data.COMMANDS, **cohort.COMMANDS, **encoder.COMMANDS, **_EVAL_COMMANDS,
            "demo": _run_demo, "study": _run_study}


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
    data._add_extract(sub)
    data._add_meds(sub)
    _add_demo(sub)
    data._add_demo_cdm(sub)
    encoder._add_pretrain(sub)
    data._add_vocab(sub)
    cohort._add_cohort(sub)
    encoder._add_embed(sub)
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

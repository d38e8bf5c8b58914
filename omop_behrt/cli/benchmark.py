"""``omop-behrt benchmark``: a suite of tasks at shared index dates, every method, macro AUROC with CIs, HTML.

Same shape as the other cli modules: :func:`add_parsers` declares the subcommand, :data:`COMMANDS` runs it.
Nothing heavy is imported to build the parser.
"""
from __future__ import annotations

import os

from omop_behrt.choices import BENCHMARK_METHODS, POOLINGS, comma_floats
from omop_behrt.cli.options import positive_int
from omop_behrt.shareable import MIN_COUNT

DEFAULT_METHODS = ",".join(BENCHMARK_METHODS)



def _models(items: list[str] | None) -> dict[str, str] | None:
    """``NAME=DIR`` (or a bare DIR, named after its folder) -> {name: dir}; names must differ."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        name, _, path = item.partition("=") if "=" in item else (os.path.basename(item.rstrip("/")), "", item)
        if not name or not path:
            raise ValueError(f"--model takes NAME=DIR or DIR; got {item!r}")
        if name in out:
            raise ValueError(f"--model: two models are named {name!r}; name them NAME=DIR")
        out[name] = path
    return out


def _add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="a suite of tasks (EHRSHOT style) on one source: every method, macro AUROC",
                       description="Draw one index date per person, label every task of the suite from the event "
                                   "directory (OMOP or FHIR alike), split by person, pretrain an encoder on the "
                                   "events before the index dates (unless --model is given), run the methods on "
                                   "each task and print the macro AUROC / AUPRC with paired bootstrap CIs and the "
                                   "difference from counts. Writes WORK_DIR/results.json (aggregates only) and "
                                   "WORK_DIR/benchmark.html.")
    p.add_argument("--source", help="event directory (omop-behrt extract) or a CDM (extracted into the work directory)")
    p.add_argument("--suite", default="eunomia", help="a shipped suite (see --list-suites) or a suite YAML file")
    p.add_argument("--work-dir", help="where the suite's rows, the pretrained model and the results go (per-person "
                                      "data: keep it on site; results.json and benchmark.html are shareable)")
    p.add_argument("--list-suites", action="store_true", help="print the shipped suites and exit")
    p.add_argument("--model", action="append", metavar="NAME=DIR",
                   help="an encoder to compare (repeat for several: a local and a foreign model, two configs); "
                        "default: pretrain one here on the events before the index dates")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated comparison methods (see `evaluate --help`); fine-tuning "
                        "(finetuned-pretrained, finetuned-scratch) and text-* run only when named")
    p.add_argument("--few-shot", type=comma_floats, default=None, metavar="FRACTIONS",
                   help="few-shot curves at these fractions of the training labels, e.g. 0.01,0.1,1 (default: none)")
    p.add_argument("--text-model", help="the text-* methods' language model (a local directory, or "
                                        "all-MiniLM-L6-v2, the packaged default)")
    p.add_argument("--config", help="pretraining: tiny (default), behrt or a config.json")
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="continue pretraining this model (e.g. one shared by another site) on the suite's events "
                        "before the index dates, instead of starting from random weights (see pretrain --init)")
    p.add_argument("--epochs", type=positive_int, default=10, help="pretraining epochs")
    p.add_argument("--vocab", help="pretraining vocabulary (default source; see `omop-behrt vocab`)")
    p.add_argument("--finetune-epochs", type=positive_int, default=8,
                   help="fine-tuning epochs (early stopping on val)")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="patient vector of the embedding methods: [CLS], mean of all tokens, or the last visit's")
    p.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the fits, few-shot subsamples and bootstrap")
    p.add_argument("--jobs", type=positive_int, default=min(2, os.cpu_count() or 1),
                   help="worker processes for the fine-tunes (as in evaluate)")
    p.add_argument("--device", default="auto", help="pretraining device: auto, cpu or cuda")
    p.add_argument("--min-count", type=positive_int, default=MIN_COUNT,
                   help="counts of persons below this show as <N")
    p.add_argument("--cdm-schema", help="schema of the CDM tables when --source is a CDM")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_benchmark(args) -> int:
    if args.list_suites:
        from omop_behrt.tasks.suite import Suite, suite_names
        for name in suite_names():
            s = Suite.load(name)
            print(f"{name:<14} {len(s.tasks)} tasks  {s.description}")
        return 0
    if not args.source or not args.work_dir:
        raise ValueError("benchmark needs --source and --work-dir (or --list-suites)")
    from omop_behrt.evaluation.benchmark import results_table, run_benchmark
    out = run_benchmark(args.source, args.suite, args.work_dir, models=_models(args.model),
                        pretrain_options={"epochs": args.epochs, "device": args.device, "seed": args.seed,
                                          **{k: v for k, v in (("config", args.config), ("vocab", args.vocab),
                                                               ("init", args.init)) if v is not None}},
                        methods=args.methods, few_shot_fractions=args.few_shot, text_model=args.text_model,
                        finetune={"epochs": args.finetune_epochs}, pooling=args.pooling, n_jobs=args.jobs,
                        n_boot=args.bootstrap, seed=args.seed, cdm_schema=args.cdm_schema,
                        min_count=args.min_count, progress=not args.quiet)
    print(results_table(out))
    print(f"results: {os.path.join(args.work_dir, 'results.json')}  report: "
          f"{os.path.join(args.work_dir, 'benchmark.html')}")
    return 0


COMMANDS = {"benchmark": _run_benchmark}


def add_parsers(sub) -> None:
    _add_benchmark(sub)

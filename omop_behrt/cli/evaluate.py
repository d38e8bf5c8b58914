"""Prediction subcommands of ``omop-behrt``: ``task`` (labels + split), ``finetune`` and ``evaluate`` (+ report).

Same shape as the other cli modules: ``_add_<name>(subparsers)`` declares a subcommand, ``_run_<name>(args)``
runs it; :data:`COMMANDS` and :func:`add_parsers` are what cli.py registers. Nothing heavy is imported to build
the parser (choices from :mod:`omop_behrt.choices`; numpy, torch and scikit-learn inside the ``_run_*``).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from omop_behrt.choices import (ALL_METHODS, FRACTIONS, HEADS, METHODS, POOLINGS, RESULTS_SCHEMA, TEXT_METHODS,
                      comma_floats)
from omop_behrt.cli.options import ids_arg
from omop_behrt.shareable import MIN_COUNT, count_text

if TYPE_CHECKING:
    import numpy as np



# -- task ------------------------------------------------------------------------------------------
def _add_task(sub) -> None:
    p = sub.add_parser("task", help="make prediction labels (PLP-style or BEHRT T1-T3) and a person split",
                       description="Write a task directory: labels (per person: keep on site), task.json "
                                   "(definition, attrition) and split.parquet (seeded train/val/test by person).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="task directory to write (per-person labels: keep it on site)")
    common.add_argument("--split", type=comma_floats, default=[0.6, 0.2, 0.2],
                        help="train,val,test fractions of persons")
    common.add_argument("--seed", type=int, default=0, help="seed of the person split (and of BEHRT's cut visits)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    q = kinds.add_parser("plp", parents=[common], help="binary outcome in a time at risk after a target cohort's "
                                                       "index (PatientLevelPrediction style)",
                         description="Label each target entry 1 when the outcome (concepts with descendants, or "
                                     "an outcome cohort) occurs in [index + --tar-start, index + --tar-end] days; "
                                     "entries failing an exclusion are dropped and counted in task.json.")
    q.add_argument("--source", required=True, help="the CDM (DuckDB file, URL, export folder)")
    q.add_argument("--target-cohort-id", type=int, help="target cohort id in <results-schema>.<cohort-table>")
    q.add_argument("--target", help="CSV with subject_id,index_date instead of a cohort")
    q.add_argument("--target-json", help="ATLAS/CIRCE target cohort definition, generated first (as "
                                         "--target-cohort-id, default its numeric file name)")
    q.add_argument("--outcome-concepts", type=ids_arg,
                   help="outcome concept ids (with descendants; comma separated, or a file of ids)")
    q.add_argument("--outcome-cohort-id", type=int, help="outcome cohort id (same cohort table) instead of concepts")
    q.add_argument("--outcome-json", help="ATLAS/CIRCE outcome cohort definition, generated first (as "
                                          "--outcome-cohort-id, default its numeric file name)")
    q.add_argument("--no-descendants", action="store_true",
                   help="the outcome concepts only (default: with their descendants)")
    q.add_argument("--tar-start", type=int, default=1, help="time at risk starts this many days after index")
    q.add_argument("--tar-end", type=int, default=365, help="and ends this many days after index (inclusive)")
    q.add_argument("--min-prior-observation", type=int, default=0, help="days of observation required before index")
    q.add_argument("--min-time-at-risk", type=int, default=364, help="days at risk required (unless the outcome "
                                                                     "occurs)")
    q.add_argument("--keep-prior-outcome", action="store_true",
                   help="keep entries with the outcome before index (default: dropped)")
    q.add_argument("--cdm-schema", help="schema holding the CDM tables (default: main in DuckDB, the "
                                        "connection's default schema on a server)")
    q.add_argument("--results-schema", default=RESULTS_SCHEMA, help="schema of the cohort table (target, outcome)")
    q.add_argument("--cohort-table", default="cohort", help="cohort table name in the results schema")
    q = kinds.add_parser("behrt", parents=[common], help="BEHRT's next-visit (T1), 6-month (T2) or 12-month (T3) "
                                                         "multi-label disease prediction",
                         description="Cut each person's record at a seeded random visit and label the disease "
                                     "tokens of the next visit (T1) or of the next 6 (T2) or 12 (T3) months.")
    q.add_argument("--events", required=True, help="event directory")
    q.add_argument("--vocab", default="caliber", help="vocabulary giving the disease tokens")
    q.add_argument("--cdm", help="CDM lending vocabulary tables to --vocab")
    q.add_argument("--task", default="T1", choices=["T1", "T2", "T3"], help="next visit, 6 or 12 months")
    q.add_argument("--disease-prefix", default="CALIBER/", help="tokens that count as diseases")
    q.add_argument("--first-incidence", action="store_true", help="only diseases not seen before the index")


def _run_task(args) -> int:
    from omop_behrt.tasks import cohorts
    from omop_behrt.tasks import labels as tasks
    out = Path(args.out)
    if args.kind == "plp":
        if args.target_json:
            if args.target:
                raise ValueError("task plp takes --target-json or --target (CSV), not both")
            target = cohorts.from_atlas(args.target_json, cohort_id=args.target_cohort_id)
        elif (args.target_cohort_id is None) == (args.target is None):
            raise ValueError("task plp needs one of --target-cohort-id, --target (CSV) or --target-json")
        else:
            target = args.target_cohort_id if args.target is None else cohorts.index_dates_from_csv(args.target)
        outcome = (cohorts.from_atlas(args.outcome_json, cohort_id=args.outcome_cohort_id) if args.outcome_json
                   else args.outcome_cohort_id)
        task = tasks.plp_task(args.source, target, outcome_concepts=args.outcome_concepts,
                              outcome_cohort=outcome, descendants=not args.no_descendants,
                              tar_start=args.tar_start, tar_end=args.tar_end,
                              min_prior_observation=args.min_prior_observation,
                              min_time_at_risk=args.min_time_at_risk, remove_prior_outcome=not args.keep_prior_outcome,
                              cdm_schema=args.cdm_schema, results_schema=args.results_schema,
                              cohort_table=args.cohort_table)
        task.save(out)
        subjects = task.labels["subject_id"].to_numpy()
        for k, v in task.attrition.items():
            print(f"{k:<50} {v:>8,}")
    else:
        from omop_behrt.vocab.mapping import map_events
        tokens = map_events(args.events, args.vocab, cdm=args.cdm, progress=False).tokens
        task = tasks.behrt_task(tokens, args.task, disease_prefix=args.disease_prefix,
                                first_incidence=args.first_incidence, seed=args.seed)
        task.save(out)
        subjects = task.index["subject_id"].to_numpy()
        print(f"{args.task}: {task.definition['persons']:,} persons, {len(task.diseases)} diseases, "
              f"{task.definition['positives']:,} positive labels")
    split = tasks.split_persons(subjects, tuple(args.split), seed=args.seed)
    tasks.save_split(out / "split.parquet", subjects, split)
    print(f"task directory: {out} (split: " + ", ".join(f"{s} {int((split == s).sum()):,}" for s in tasks.SPLITS) + ")")
    return 0


def _split_of(task_dir: Path, task) -> np.ndarray:
    from omop_behrt.tasks.labels import load_split, split_persons
    subjects = task.labels["subject_id"].to_numpy()
    if (task_dir / "split.parquet").exists():
        return load_split(task_dir / "split.parquet", subjects)
    return split_persons(subjects)


# -- finetune --------------------------------------------------------------------------------------
def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a BEHRT encoder + head on a PLP task (Med-BERT style)",
                       description="Fine-tune the pretrained encoder with a prediction head on the task's train "
                                   "split, stopping early on val; print test AUROC/AUPRC and write the head "
                                   "directory (weights only, nothing per person).")
    p.add_argument("--model", required=True, help="pretrained model directory")
    p.add_argument("--source", required=True, help="CDM or event directory the task's rows come from")
    p.add_argument("--task", required=True, help="task directory (from `omop-behrt task plp`)")
    p.add_argument("--out", required=True, help="head directory to write")
    p.add_argument("--head", choices=HEADS, default="ffn",
                   help="ffn (one hidden layer) or linear on the pooled [CLS]; gru: a bidirectional GRU over the "
                        "token outputs")
    p.add_argument("--scratch", action="store_true", help="same architecture, random weights (no pretraining)")
    p.add_argument("--epochs", type=int, default=10, help="most passes over the train split")
    p.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a better val AUROC")
    p.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate (the head's is 1e-3)")
    p.add_argument("--min-steps", type=int, default=100, help="at least this many optimizer steps (small data)")
    p.add_argument("--seed", type=int, default=0, help="random seed (head weights, batch order)")
    p.add_argument("--cdm-schema", help="schema holding the CDM tables of --source (default: main in DuckDB, the "
                                        "connection's default schema on a server)")


def _run_finetune(args) -> int:
    import numpy as np

    from omop_behrt.evaluation.comparison import prepare
    from omop_behrt.evaluation.metrics import binary_metrics
    from omop_behrt.evaluation.heads import FineTunedBehrt
    from omop_behrt.tasks.labels import Task
    task = Task.load(args.task)
    split = _split_of(Path(args.task), task)
    prep = prepare(args.model, args.source, task, cdm_schema=args.cdm_schema)
    y = task.y
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    est = FineTunedBehrt(args.model, pretrained=not args.scratch, head=args.head, epochs=args.epochs,
                         patience=args.patience, lr=args.lr, min_steps=args.min_steps, seed=args.seed)
    est.fit(prep.seqs.select(tr), y[tr], eval_set=(prep.seqs.select(va), y[va]))
    est.save(args.out)
    if est.coverage_ is not None:
        from omop_behrt.vocab.fallback import coverage_line
        print(coverage_line(est.coverage_))
    m = binary_metrics(y[te], est.predict_proba(prep.seqs.select(te))[:, 1], n_boot=200, curves=False)
    best = (f"best val AUROC {est.best_score_:.3f}" if est.early_stopping == "auroc" else
            f"best val loss {-est.best_score_:.3f}")
    print(f"test AUROC {m['auroc']:.3f} ({m['auroc_ci'][0]:.3f}-{m['auroc_ci'][1]:.3f}), AUPRC {m['auprc']:.3f}, "
          f"Brier {m['brier']:.3f}, calibration slope {m['calibration_slope']:.2f}; "
          f"{est.history_[-1]['epoch'] + 1} epochs, {best}; risks: {est.calibration_['how']}")
    print(f"head directory: {args.out}")
    return 0


# -- evaluate --------------------------------------------------------------------------------------
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="compare embeddings, fine-tuning and count baselines on a task; report",
                       description="Fit every method on the task's train split (fine-tuning stops early on val), "
                                   "score on test with bootstrap CIs, few-shot curves, optional HTML report.")
    p.add_argument("--model", required=True, help="pretrained model directory")
    p.add_argument("--source", required=True, help="CDM (censored at index in its SQL) or event directory")
    p.add_argument("--task", required=True, help="task directory (from `omop-behrt task plp`)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {', '.join(ALL_METHODS)}; the text encoder's "
                        f"{', '.join(TEXT_METHODS)} (the record as text embedded by --text-model: with LR, beside "
                        f"the counts, beside BEHRT's vectors) run only when named")
    p.add_argument("--text-model", default="all-MiniLM-L6-v2",
                   help="the text-* methods' language model: a local Hugging Face or sentence-transformers "
                        "directory, or the packaged all-MiniLM-L6-v2")
    p.add_argument("--text-notes", nargs="?", const="append", choices=["none", "append", "pooled"], default="none",
                   help="the text-* methods: clinical notes before each index date (a CDM's note table, or an event "
                        "directory extracted with --notes) appended to the record's text, or embedded one by one "
                        "and pooled with it")
    p.add_argument("--few-shot", type=comma_floats, default=list(FRACTIONS),
                   help="few-shot curves: fractions of the training labels to fit on")
    p.add_argument("--no-few-shot", action="store_true", help="skip the few-shot curves (much faster)")
    p.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs (early stopping on val)")
    p.add_argument("--head", choices=HEADS, default="ffn", help="head of the fine-tuned methods (see finetune)")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="patient vector of the embedding methods: [CLS], mean of all tokens, or the last visit's")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the test set for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the fits, few-shot subsamples and bootstrap")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes for the fine-tunes (each with cores/jobs torch threads), beside the "
                        "scikit-learn fits; 1 runs everything in this process (same numbers either way)")
    p.add_argument("--report", help="write report.html + results.json into this directory (shareable: aggregates "
                                    "only, counts below --min-count shown as <N)")
    p.add_argument("--json", dest="json_out", help="write the results as JSON here (aggregates only, as results.json)")
    p.add_argument("--min-count", type=int, default=MIN_COUNT,
                   help="counts of persons below this show as <N in the report and JSON; curves and calibration "
                        "bins span at least this many persons")
    p.add_argument("--save-predictions", metavar="PATH",
                   help="write per-person test predictions with subject ids and outcomes to PATH (CSV, or Parquet "
                        "for .parquet; patient-level data: keep it inside the site)")
    p.add_argument("--example-person", type=int, metavar="SUBJECT_ID",
                   help="the report's attention view shows this person's record instead of the mean over test "
                        "persons (patient-level data: the report is then not shareable)")
    p.add_argument("--cdm-schema", help="schema holding the CDM tables of --source (default: main in DuckDB, the "
                                        "connection's default schema on a server)")


def _run_evaluate(args) -> int:
    from omop_behrt.evaluation import comparison
    from omop_behrt.evaluation.metrics import write_predictions, write_results
    from omop_behrt.tasks.labels import MultiLabelTask, Task
    if args.min_count < 1:
        raise ValueError(f"--min-count must be at least 1, got {args.min_count}")
    if args.example_person is not None and not args.report:
        raise ValueError("--example-person draws in the report: pass --report DIR too")
    if (Path(args.task) / "labels.npz").exists():            # BEHRT T1-T3
        if args.save_predictions or args.example_person is not None or args.report:
            raise ValueError("--save-predictions, --example-person and --report are for binary (plp) tasks; "
                             "a BEHRT T1-T3 task writes --json only")
        task = MultiLabelTask.load(args.task)
        prep = comparison.prepare(args.model, args.source, task, cdm_schema=args.cdm_schema)
        res = comparison.run_behrt(prep, _split_of(Path(args.task), task), seed=args.seed,
                                   finetune={"epochs": args.epochs})
        if args.json_out:
            write_results(res, args.json_out, args.min_count)
        return 0
    task = Task.load(args.task)
    methods = comparison.check_methods(args.methods, comparison.ALL_METHODS)   # a typo fails now, not after extraction
    split = _split_of(Path(args.task), task)
    encoder = None
    if any(m in comparison.TEXT_METHODS for m in methods):     # loaded first: a bad --text-model fails at once
        from omop_behrt.text.encoder import TextEncoder
        encoder = TextEncoder(args.text_model, progress=True)  # minutes on a CPU: a bar on stderr
    prep = comparison.prepare(args.model, args.source, task, cdm_schema=args.cdm_schema, text_encoder=encoder,
                              text_notes=args.text_notes)
    res = comparison.run(prep, split, methods=methods,
                         few_shot_fractions=None if args.no_few_shot else args.few_shot,
                         finetune={"epochs": args.epochs, "head": args.head}, pooling=args.pooling,
                         n_boot=args.bootstrap, seed=args.seed, n_jobs=args.jobs)
    print(results_table(res, args.min_count))
    if args.json_out:
        write_results(res, args.json_out, args.min_count)
    if args.save_predictions:
        path = write_predictions(res, args.save_predictions)
        print(f"per-person predictions (patient-level, keep inside the site): {path}")
    if args.report:
        from omop_behrt.vectors.embed import _is_cdm
        from omop_behrt.evaluation.report import write_report
        cdm = args.source if _is_cdm(args.source) else None
        path = write_report(args.report, res, args.model, prep=prep, cdm=cdm,
                            example_person=args.example_person, min_count=args.min_count)
        print(f"report: {path}" + (" (holds one person's record: not shareable)" if args.example_person is not None
                                   else ""))
    return 0


def results_table(res: dict, min_count: int = MIN_COUNT) -> str:
    """The comparison as a plain-text table (methods, then the few-shot rows), counts below min_count as <N."""
    from omop_behrt.evaluation.metrics import format_ci as ci
    from omop_behrt.evaluation.metrics import shareable_results
    res = shareable_results(res, min_count)
    n = res["n"]["test"]
    lines = [f"test: {count_text(n['rows'])} rows, {count_text(n['positives'])} positive",
             f"{'method':<26} {'AUROC (95% CI)':<22} {'AUPRC (95% CI)':<22} {'Brier':>6} {'slope':>6}"]
    for name, m in res["methods"].items():
        lines.append(f"{name:<26} {ci(m, 'auroc'):<22} {ci(m, 'auprc'):<22} {m['brier']:>6.3f} "
                     f"{m['calibration_slope']:>6.2f}")
    if res.get("few_shot"):
        lines.append(f"\n{'few-shot':<26} {'% labels':>8} {'n':>6} {'pos':>5} {'AUROC':>7} {'AUPRC':>7}")
        for r in res["few_shot"]:
            lines.append(f"{r['method']:<26} {r['fraction'] * 100:>8g} {count_text(r['n_train']):>6} "
                         f"{count_text(r['train_positives']):>5} "
                         f"{r['auroc']:>7.3f} {r['auprc']:>7.3f}")
    return "\n".join(lines)


# -- check-shareable -------------------------------------------------------------------------------
def _add_check_shareable(sub) -> None:
    p = sub.add_parser("check-shareable", help="fail on anything patient-level in a folder meant to leave the site",
                       description="Scan a model directory, a report folder, a coverage report or any folder (or "
                                   "one file): data files, per-person JSON keys or arrays, person ids in HTML or "
                                   "logs, codes or tokens seen in fewer than --min-count persons. Exit 1 listing "
                                   "each finding (file: what (why)), 0 when shareable.")
    p.add_argument("path", help="folder or file to check")
    p.add_argument("--min-count", type=int, default=MIN_COUNT,
                   help="a code or count below this many persons is a finding")


def _run_check_shareable(args) -> int:
    from omop_behrt.shareable import check_shareable, shareable_files
    findings = check_shareable(args.path, min_count=args.min_count)
    n = len(shareable_files(Path(args.path)))
    if not findings:
        print(f"shareable: {n:,} file{'s' * (n != 1)} checked")
        return 0
    for f in findings:
        print(f"{f.file}: {f.what} ({f.why})")
    k = len(findings)
    print(f"not shareable: {k} finding{'s' * (k != 1)} in {n:,} file{'s' * (n != 1)} checked")
    return 1


from omop_behrt.cli.benchmark import COMMANDS as _BENCH_COMMANDS  # noqa: E402

COMMANDS = {"task": _run_task, "finetune": _run_finetune, "evaluate": _run_evaluate,
            "check-shareable": _run_check_shareable, **_BENCH_COMMANDS}


def add_parsers(sub) -> None:
    """Declare the prediction subcommands (and check-shareable, benchmark) on cli.py's subparsers."""
    from omop_behrt.cli.benchmark import add_parsers as add_benchmark
    _add_task(sub)
    _add_finetune(sub)
    _add_evaluate(sub)
    add_benchmark(sub)
    _add_check_shareable(sub)

"""The benchmark: every method on every task of a suite, one split, macro AUROC / AUPRC with bootstrap CIs.

    run_benchmark(source, "eunomia", work_dir)        # what `omop-behrt benchmark` runs

The suite (:mod:`omop_behrt.tasks.suite`) gives index dates, a person split and the tasks' labels, all from the event
directory. Without a model, one is pretrained on the same event directory censored at the index dates (no
pretraining event on or after any index date, so no leakage into the outcome windows); ``models`` compares
several encoders (a local one, a foreign one, configurations). Each model is prepared once for all index rows
(tokenised, text-embedded); each task then takes its rows (:meth:`omop_behrt.evaluation.comparison.Prepared.subset`) and
runs :func:`omop_behrt.evaluation.comparison.run`. The macro row is the mean over the scored tasks; its CI and the CI of
each method's difference from counts (the better of LR / GBM per task, judged on test, which favours the
baseline) come from one paired bootstrap: the same resampled test rows for every method of a task.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from omop_behrt.choices import BENCHMARK_METHODS
from omop_behrt.db.database import is_cdm_source
from omop_behrt.evaluation.metrics import _resamples, _suppress, ranking_bootstrap, shareable_results
from omop_behrt.events import EventDir, write_json
from omop_behrt.lock import exclusive_lock
from omop_behrt.shareable import MIN_COUNT
from omop_behrt.tasks.suite import BuiltSuite, Suite, build, censor, task_problems
from omop_behrt.tasks.labels import Task

#: the methods a benchmark runs unless told otherwise (fine-tuning is asked for by name: minutes per task)
DEFAULT_METHODS = BENCHMARK_METHODS
#: methods that read no encoder: run once, with the first model
COUNT_METHODS = ("counts-lr", "counts-gbm")
#: the baseline row every method is compared with: per task the better of these two
BASELINE = "counts (best of LR / GBM)"


def source_events(source, work: Path, *, cdm_schema: str | None = None, progress: bool = False) -> EventDir:
    """An event directory as is; a CDM extracted (whole, uncensored) into ``work/events`` (resumed when there)."""
    if isinstance(source, EventDir):
        return source
    if not is_cdm_source(source):
        return EventDir.open(source)
    from omop_behrt.adapters import omop
    out = work / "events"
    omop.extract(source, out, cdm_schema=cdm_schema, progress=progress, resume=(out / "manifest.json").exists())
    return EventDir.open(out)


def pretrain_local(events: EventDir, built: BuiltSuite, work: Path, options: Mapping | None = None,
                   progress: bool = False) -> Path:
    """A model pretrained on the suite's event directory censored at the index dates. Its folder is named by a
    digest of the options and the index dates, so a run with other settings or another suite never reuses it."""
    from omop_behrt.adapters.omop import index_dates_digest
    from omop_behrt.behrt.pretrain import pretrain
    init = (options or {}).get("init")        # continued pretraining: config and vocabulary are the init model's
    opts = {"vocab": None if init else "source", "config": None if init else "tiny", "epochs": 10, "seed": 0,
            "device": "auto", **(options or {})}
    if init:
        from omop_behrt.behrt.model import model_id
        opts["init"] = str(init)
        opts["init_model"] = model_id(init)
    key = hashlib.sha256(json.dumps({"options": {k: v for k, v in opts.items() if k not in ("device", "init")},
                                     "index": index_dates_digest(built.index.select(["subject_id", "index_date"]))},
                                    sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = work / "models" / f"local-{key}"
    if (out / "model.safetensors").exists():
        return out
    censored = censor(events, built.index, work / "censored")
    vocab = opts.pop("vocab")
    opts.pop("init_model", None)
    pretrain(censored, vocab, out, work_dir=work / "models" / f"local-{key}.work", progress=progress, **opts)
    return out


def _all_rows_task(built: BuiltSuite) -> Task:
    """Every index row as one task (label 0): what prepare() tokenises once for all tasks."""
    ix = built.index
    labels = pa.table({"subject_id": ix["subject_id"], "index_date": ix["index_date"],
                       "label": pa.array(np.zeros(ix.num_rows, np.int8))})
    return Task(labels, {"kind": "plp", "tar_start": 0, "tar_end": max(t.window[1] for t in built.suite.tasks)})


def run_benchmark(source, suite: "Suite | str | Path", work_dir: str | Path, *,
                  models: Mapping[str, str | Path] | None = None, pretrain_options: Mapping | None = None,
                  methods: Sequence[str] = DEFAULT_METHODS, few_shot_fractions: Sequence[float] | None = None,
                  text_model: str | Path | None = None, finetune: dict | None = None, pooling: str = "mean",
                  n_jobs: int = 1, n_boot: int = 1000,
                  seed: int = 0, cdm_schema: str | None = None, min_count: int = MIN_COUNT,
                  progress: bool = True) -> dict:
    """Run ``methods`` of every model on every task of ``suite``; the results (aggregates only) and where saved.

    ``models``: name -> model directory (default: ``{"local": <pretrained here>}``). Count methods run once.
    ``text_model``: also the text encoder (text-* methods) beside the first model. Writes
    ``work_dir/results.json`` and ``work_dir/benchmark.html``; the suite's per-person rows stay in
    ``work_dir/suite`` (the work directory is the site's, never shared).
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(work / ".benchmark.lock", 0, f"another benchmark is running in {work} (wait for it, or "
                        "give another --work-dir)"):
        return _run(source, suite, work, models, pretrain_options, methods, few_shot_fractions, text_model,
                    finetune, pooling, n_jobs, n_boot, seed, cdm_schema, min_count, progress)


def _run(source, suite, work: Path, models, pretrain_options, methods, few_shot_fractions, text_model, finetune,
         pooling, n_jobs, n_boot, seed, cdm_schema, min_count, progress) -> dict:
    """:func:`run_benchmark` in its locked work directory."""
    from omop_behrt.evaluation import comparison
    t0 = time.perf_counter()
    methods = comparison.check_methods(methods, comparison.ALL_METHODS)
    events = source_events(source, work, cdm_schema=cdm_schema, progress=progress)
    built = build(events, suite)
    built.save(work / "suite")
    seconds = {"suite": round(time.perf_counter() - t0, 2)}
    if not models:
        t = time.perf_counter()
        models = {"local": pretrain_local(events, built, work, pretrain_options, progress)}
        seconds["pretrain"] = round(time.perf_counter() - t, 2)
    problems = task_problems(built)
    scored = [t.name for t in built.suite.tasks if not problems.get(t.name, "").endswith("not scored")]
    results: dict = {name: {} for name in scored}
    predictions: dict = {name: {} for name in scored}
    provenance = {}
    for k, (model_name, model_dir) in enumerate(models.items()):
        t = time.perf_counter()
        mine = [m for m in methods if k == 0 or m not in COUNT_METHODS]
        if k > 0:
            mine = [m for m in mine if not m.startswith("text-")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", comparison.LeakageWarning)
            prep = comparison.prepare(model_dir, events, _all_rows_task(built), work_dir=work / "prepare",
                                      progress=progress, text_model=text_model if k == 0 and any(
                                          m.startswith("text-") for m in mine) else None)
        provenance[model_name] = {"leakage": prep.leakage, "coverage": prep.seqs.meta.get("coverage"),
                                  **_model_info(model_dir)}
        seconds[f"prepare {model_name}"] = round(time.perf_counter() - t, 2)
        label = (lambda m: m) if len(models) == 1 else (lambda m: m if m in COUNT_METHODS else f"{model_name}:{m}")
        for name in _bar(scored, progress, f"tasks ({model_name})"):
            t = time.perf_counter()
            rows = built.rows[name]
            res = comparison.run(prep.subset(rows, built.tasks[name]), built.task_split(name), methods=mine,
                                 few_shot_fractions=few_shot_fractions, finetune=finetune, pooling=pooling,
                                 n_boot=n_boot, seed=seed, progress=False, n_jobs=n_jobs)
            preds = res["test_predictions"]
            predictions[name].setdefault("y", np.asarray(preds["y"]))
            for m in mine:
                predictions[name][label(m)] = np.asarray(preds[m])
            shared = shareable_results(res, min_count)
            task = results[name]
            task["n"] = shared["n"]
            task.setdefault("methods", {}).update({label(m): e for m, e in shared["methods"].items()})
            task.setdefault("few_shot", []).extend({**r, "method": label(r["method"])} for r in shared["few_shot"])
            seconds[f"{name} ({model_name})"] = round(time.perf_counter() - t, 2)
    macro = macro_table(predictions, n_boot=n_boot, seed=seed)
    seconds["total"] = round(time.perf_counter() - t0, 2)
    out = {"suite": built.suite.to_dict(), "source": events.manifest.get("adapter"),
           "attrition": _suppress(built.attrition, min_count, True),
           "counts": _suppress(built.counts(), min_count, True), "problems": problems,
           "models": provenance, "methods": methods, "macro": macro, "tasks": results,
           "few_shot_macro": few_shot_macro(results), "seconds": seconds, "n_boot": n_boot, "seed": seed}
    write_json(out, work / "results.json")
    from omop_behrt.evaluation.benchmark_report import write_html
    write_html(out, work / "benchmark.html", min_count)
    return out


def _model_info(model_dir) -> dict:
    meta_file = Path(model_dir) / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    cfg_file = Path(model_dir) / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    return {"vocab": meta.get("vocab"), "config": {k: cfg.get(k) for k in ("hidden", "layers", "max_len", "plos")
                                                    if k in cfg}, "name": Path(model_dir).name}


def _bar(items, progress: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="task", disable=not progress, leave=False, dynamic_ncols=True)


def macro_table(predictions: Mapping[str, Mapping[str, np.ndarray]], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Macro AUROC and AUPRC per method over the tasks every method scored, with paired bootstrap CIs, and each
    method's difference from the count baseline (per task the better of counts-lr / counts-gbm) with its CI."""
    tasks = [t for t, p in predictions.items() if len(p) > 1]
    if not tasks:
        return {}
    methods = [m for m in predictions[tasks[0]] if m != "y" and all(m in predictions[t] for t in tasks)]
    boot: dict[str, dict[str, dict[str, np.ndarray]]] = {}        # task -> method -> metric -> (B,)
    point: dict[str, dict[str, dict[str, float]]] = {}            # task -> method -> metric -> value
    for j, t in enumerate(tasks):
        y = np.asarray(predictions[t]["y"]).astype(int)
        draws = _resamples(len(y), n_boot, seed + j)
        boot[t], point[t] = {}, {}
        for m in methods:
            p = np.asarray(predictions[t][m], float)
            boot[t][m] = ranking_bootstrap(y, p, draws)
            point[t][m] = {k: float(v[0]) for k, v in ranking_bootstrap(y, p, np.arange(len(y))[None, :]).items()}
        counts = [m for m in COUNT_METHODS if m in methods]
        if counts:
            best = max(counts, key=lambda m: point[t][m]["auroc"])
            boot[t][BASELINE], point[t][BASELINE] = boot[t][best], point[t][best]
    rows = methods + ([BASELINE] if BASELINE in point[tasks[0]] else [])
    out: dict = {"tasks": tasks, "methods": {}}
    for m in rows:
        entry: dict = {}
        for k in ("auroc", "auprc"):
            entry[k] = float(np.mean([point[t][m][k] for t in tasks]))
            if n_boot:
                mean = np.nanmean(np.stack([boot[t][m][k] for t in tasks]), axis=0)
                entry[f"{k}_ci"] = [float(np.nanpercentile(mean, 2.5)), float(np.nanpercentile(mean, 97.5))]
        if BASELINE in point[tasks[0]] and m != BASELINE:
            entry["vs_counts"] = float(np.mean([point[t][m]["auroc"] - point[t][BASELINE]["auroc"] for t in tasks]))
            if n_boot:
                diff = np.nanmean(np.stack([boot[t][m]["auroc"] - boot[t][BASELINE]["auroc"] for t in tasks]), 0)
                entry["vs_counts_ci"] = [float(np.nanpercentile(diff, 2.5)), float(np.nanpercentile(diff, 97.5))]
        out["methods"][m] = entry
    return out


def few_shot_macro(results: Mapping[str, Mapping]) -> list[dict]:
    """Mean few-shot AUROC per (method, fraction) over the tasks that have that point."""
    acc: dict[tuple, list[float]] = {}
    for res in results.values():
        for row in res.get("few_shot", []):
            acc.setdefault((row["method"], row["fraction"]), []).append(row["auroc"])
    return [{"method": m, "fraction": f, "auroc": float(np.mean(v)), "tasks": len(v)}
            for (m, f), v in sorted(acc.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


SHORT = {"embeddings-lr": "emb", "embeddings-counts": "emb+cnt", "counts-lr": "cnt-lr", "counts-gbm": "cnt-gbm",
         "finetuned-pretrained": "ft-pre", "finetuned-scratch": "ft-scr", "text-lr": "txt", "text-counts": "txt+cnt",
         "text-behrt": "txt+emb"}


def _short(method: str) -> str:
    """A column heading: ``model:method`` with the method abbreviated, cut to 16 characters."""
    model, _, m = method.rpartition(":")
    return ((model + ":" if model else "") + SHORT.get(m, m))[-16:]


def results_table(out: Mapping) -> str:
    """The console table: macro row per method on top, then AUROC per task and method."""
    macro = out.get("macro") or {}
    methods = list((macro.get("methods") or {}).keys())
    tasks = list(out["tasks"].keys())
    width = max([len(m) for m in methods] + [22])
    head = f"{'method':<{width}}  {'macro AUROC (95% CI)':<24} {'vs counts (95% CI)':<24}"
    lines = [f"suite {out['suite']['name']}: {len(macro.get('tasks', []))} tasks scored", head, "-" * len(head)]
    for m in methods:
        e = macro["methods"][m]
        ci = f"{e['auroc']:.3f} ({e['auroc_ci'][0]:.3f}-{e['auroc_ci'][1]:.3f})" if "auroc_ci" in e \
            else f"{e['auroc']:.3f}"
        d = (f"{e['vs_counts']:+.3f} ({e['vs_counts_ci'][0]:+.3f} to {e['vs_counts_ci'][1]:+.3f})"
             if "vs_counts_ci" in e else (f"{e['vs_counts']:+.3f}" if "vs_counts" in e else ""))
        lines.append(f"{m:<{width}}  {ci:<24} {d:<24}")
    lines.append("")
    cols = [m for m in methods if m != BASELINE]
    lines.append(f"{'task':<26} {'test n/pos':>10}  " + "  ".join(f"{_short(c):>16}" for c in cols))
    for t in tasks:
        n = out["tasks"][t].get("n", {}).get("test", {})
        shown = f"{n.get('rows', 0)}/{n.get('positives', 0)}"
        scores = out["tasks"][t].get("methods", {})
        cells = [f"{scores[c]['auroc']:.3f}" if c in scores else "-" for c in cols]
        lines.append(f"{t:<26} {shown:>10}  " + "  ".join(f"{c:>16}" for c in cells))
    for t, why in (out.get("problems") or {}).items():
        lines.append(f"note: {t}: {why}")
    return "\n".join(lines)

"""The comparison: every method on one task, one person split, one run (what `omop-behrt evaluate` prints).

Methods: embeddings + logistic regression (the linear probe), counts + logistic regression, counts +
gradient boosting, embeddings + counts, and the encoder fine-tuned end to end from pretrained weights and
from scratch; then the few-shot curves. On request, the text encoder (Hegselmann et al.: each record
serialised as text and embedded by a language model) beside them: text + LR, text + counts, text + BEHRT.
The two "vectors + counts" methods fit both the logistic regression and the GBM and keep the one with the
better validation AUROC (:func:`fit_better`; on Eunomia counts alone do better with the GBM). Inputs for every
method are the events strictly before each row's index date (censored in the extraction SQL when the source is a
CDM, cut by the tokenizer and the count query otherwise).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from omop_behrt.evaluation.metrics import FRACTIONS, binary_metrics, few_shot, subsample
from omop_behrt.tasks.labels import LeakageWarning, Task, pretraining_overlap

# the method names (METHODS, TEXT_METHODS, ALL_METHODS, FEW_SHOT_METHODS, TORCH_METHODS, CHOICE_METHODS) live in
# choices.py, which the command line reads without importing this module
from omop_behrt.choices import (ALL_METHODS, CHOICE_METHODS, FEW_SHOT_METHODS, METHODS, TEXT_METHODS,  # noqa: F401
                      TORCH_METHODS)
#: the rule :func:`fit_better` applies, as the results and the report say it
CHOICE_RULE = "the higher AUROC on the validation rows; a tie keeps LR"


def check_methods(methods: str | Sequence[str], valid: Sequence[str] = METHODS) -> list[str]:
    """Method names from a comma-separated string or a list, checked: one error naming every valid name."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else [str(m).strip() for m in methods]
    names = list(dict.fromkeys(m for m in names if m))
    unknown = [m for m in names if m not in valid]
    if unknown:
        raise ValueError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"valid names: {', '.join(valid)}")
    if not names:
        raise ValueError(f"no method given; valid names: {', '.join(valid)}")
    return names


@dataclass
class Prepared:
    """A task's rows with everything the methods read: sequences (aligned with rows), codes, persons."""

    task: Task
    seqs: object                  # omop_behrt.behrt.tokenizer.Sequences, row i = task row i
    codes: pa.Table               # subject_id, time, code (events before each person's last index date)
    persons: pa.Table
    model_dir: Path
    model: object = None          # the loaded omop_behrt.behrt.model.Behrt (loaded once, shared by the methods)
    leakage: str | None = None    # tasks.pretraining_overlap's warning: the encoder saw outcome-window events
    text: object = None           # vectors.embed.EmbeddingResult of the text encoder (row i = task row i), or None

    def subset(self, rows: np.ndarray, task: Task) -> "Prepared":
        """The same preparation for some of its rows, labelled by another task (a suite: one preparation, many
        tasks at the same index rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        text = None if self.text is None else replace(
            self.text, index=self.text.index.take(pa.array(rows)), vectors=np.asarray(self.text.vectors)[rows],
            has_history=np.asarray(self.text.has_history)[rows])
        return replace(self, task=task, seqs=self.seqs.select(rows), text=text)


def prepare(model_dir: str | Path, source, task: Task, *, cdm_schema: str | None = None,
            vocab_schema: str | None = None, work_dir: str | Path | None = None, progress: bool = False,
            text_model: str | Path | None = None, text_encoder=None, text_notes: str | None = None) -> Prepared:
    """Extract (censored at the index dates when ``source`` is a CDM), map to the model's tokens, tokenise.

    With ``text_model`` (a local model directory or ``default``; or a loaded ``text_encoder``), also the text
    vectors of the rows for the text-* methods: :func:`omop_behrt.vectors.embed_text.embed_text_cohort` on the same
    censored events (no second extraction), with the clinical notes when ``text_notes`` is ``append`` or ``pooled``.
    Without, nothing of the text path is imported.
    """
    from omop_behrt.vectors.embed import censored_events, cut_times, index_sequences
    from omop_behrt.behrt.model import Behrt
    from omop_behrt.behrt.tokenizer import visit_table
    from omop_behrt.vocab.mapping import map_events
    model = Behrt.load(model_dir)
    leakage = pretraining_overlap(model.metadata, task)
    if leakage:
        warnings.warn(leakage, LeakageWarning, stacklevel=2)
    tmp = None
    if work_dir is None:
        tmp = work_dir = Path(tempfile.mkdtemp(prefix="omop-behrt-eval-"))
    try:
        text_notes = None if text_notes in (None, False, "none") else text_notes
        with_text = text_model is not None or text_encoder is not None
        events, cdm = censored_events(source, task.labels, Path(work_dir), cdm_schema=cdm_schema,
                                      vocab_schema=vocab_schema, progress=progress,
                                      notes=with_text and text_notes is not None)
        persons = events.persons()
        codes = events.read_events(["subject_id", "time", "code"])
        tokens = map_events(events, vocab=model.metadata.get("vocab", "source"), cdm=cdm, progress=False).tokens
        seqs, order = index_sequences(tokens, persons, visit_table(events), model,
                                      task.labels["subject_id"].to_numpy(), cut_times(task.labels), cdm=cdm)
        text = None
        if with_text:
            from omop_behrt.vectors.embed_text import embed_text_cohort
            text = embed_text_cohort(events, task.index, text_model=text_model or "default", cdm=cdm,
                                     cdm_schema=cdm_schema, vocab_schema=vocab_schema,
                                     work_dir=Path(work_dir) / "text", progress=progress, encoder=text_encoder,
                                     notes=text_notes)
        return Prepared(task, seqs.select(order), codes, persons, Path(model_dir), model, leakage, text)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def fit_better(X_lr, X_gbm: np.ndarray, y: np.ndarray, rows: np.ndarray, val: np.ndarray, test: np.ndarray,
               seed: int = 0) -> tuple[np.ndarray, dict]:
    """Fit LR (:func:`~omop_behrt.evaluation.baselines.counts_lr` on ``X_lr``) and the GBM (``counts_gbm`` on the dense
    ``X_gbm``) on ``rows``; keep the one with the higher AUROC on ``val``; its predictions for ``test``.

    The choice reads only ``rows`` and ``val`` (never ``test``). Returns (test predictions, the choice: ``chosen``
    ``lr`` or ``gbm``, each candidate's ``validation_auroc`` and the ``rule``). A validation set without both
    classes cannot choose: LR is kept and ``why`` says so.
    """
    from sklearn.metrics import roc_auc_score

    from omop_behrt.evaluation.baselines import counts_gbm, counts_lr
    rows, val, test = (np.asarray(r) for r in (rows, val, test))
    y = np.asarray(y)
    models = {"lr": counts_lr(seed=seed).fit(X_lr[rows], y[rows]),
              "gbm": counts_gbm(seed).fit(X_gbm[rows], y[rows])}
    X = {"lr": X_lr, "gbm": X_gbm}
    if len(val) == 0 or len(np.unique(y[val])) < 2:
        choice = {"chosen": "lr", "validation_auroc": None, "rule": CHOICE_RULE,
                  "why": "the validation rows lack one of the two classes: no choice possible, LR kept"}
    else:
        aurocs = {k: float(roc_auc_score(y[val], m.predict_proba(X[k][val])[:, 1])) for k, m in models.items()}
        choice = {"chosen": "gbm" if aurocs["gbm"] > aurocs["lr"] else "lr",
                  "validation_auroc": {k: round(v, 4) for k, v in aurocs.items()}, "rule": CHOICE_RULE}
    k = choice["chosen"]
    return models[k].predict_proba(X[k][test])[:, 1], choice


def _finetuner(prep: Prepared, pretrained: bool, finetune: dict, seed: int):
    from omop_behrt.evaluation.heads import FineTunedBehrt
    return FineTunedBehrt(prep.model_dir, pretrained=pretrained, seed=seed, **finetune)


_RELAY = None          # in a worker process: the queue its fine-tuning progress goes to


def _worker_init(relay, threads: int) -> None:
    """A fit worker: ``threads`` torch threads (never more than its share of the cores), quiet on Ctrl-C."""
    import signal

    import torch
    global _RELAY
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the parent stops the workers and says one line
    torch.set_num_threads(threads)
    _RELAY = relay


def _finetune_job(label: str, model_dir: Path, pretrained: bool, finetune: dict, seed: int, train, y_train,
                  val, y_val, test) -> np.ndarray:
    """One fine-tune in a worker process (what ``fit_predict`` does in the parent), progress sent to the parent."""
    from omop_behrt.evaluation.heads import FineTunedBehrt
    est = FineTunedBehrt(model_dir, pretrained=pretrained, seed=seed, **{**finetune, "progress": False})
    if _RELAY is not None:
        est._on_epoch = lambda epoch, total, post: _RELAY.put((label, epoch, total, post))
    est.fit(train, y_train, eval_set=(val, y_val))
    if _RELAY is not None:
        _RELAY.put((label, None, None, None))
    return est.predict_proba(test)[:, 1]


class FitPool:
    """Fine-tunes in ``n_jobs`` worker processes of ``cpus // n_jobs`` torch threads each (no oversubscription).

    Each fit is seeded and self-contained, so the predictions are those of the same fits run one after
    another. With ``progress``, one bar per running fine-tune (epochs, loss, validation AUROC) on stderr,
    relayed from the workers by a thread here.
    """

    def __init__(self, n_jobs: int, progress: bool):
        import multiprocessing as mp
        import threading
        from concurrent.futures import ProcessPoolExecutor
        ctx = mp.get_context("spawn")                   # no fork of a process holding torch / DuckDB threads
        self.relay = ctx.Queue() if progress else None
        threads = max(1, (os.cpu_count() or 1) // n_jobs)
        self.pool = ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_worker_init,
                                        initargs=(self.relay, threads))
        self.bars: dict = {}
        self.thread = threading.Thread(target=self._show, daemon=True) if progress else None
        if self.thread is not None:
            self.thread.start()

    def _show(self) -> None:
        from tqdm.auto import tqdm
        while True:
            msg = self.relay.get()
            if msg is None:
                break
            label, epoch, total, post = msg
            bar = self.bars.get(label)
            if epoch is None:
                if bar is not None:
                    self.bars.pop(label).close()
                continue
            if bar is None:
                bar = self.bars[label] = tqdm(total=total, desc=f"fine-tune {label}", unit="epoch", leave=False,
                                              dynamic_ncols=True)
            bar.total = total
            bar.update(epoch + 1 - bar.n)
            if post:
                bar.set_postfix(post, refresh=True)

    def submit(self, label: str, *args):
        return self.pool.submit(_finetune_job, label, *args)

    def close(self, cancel: bool = False) -> None:
        """Stop the workers (at once with ``cancel``: Ctrl-C must not wait for a fine-tune to end)."""
        if cancel:
            for proc in list(getattr(self.pool, "_processes", {}).values()):   # the executor has no kill()
                proc.terminate()
        self.pool.shutdown(wait=not cancel, cancel_futures=True)
        if self.thread is not None:
            self.relay.put(None)
            self.thread.join(timeout=5)


def run(prep: Prepared, split: np.ndarray, *, methods: str | Sequence[str] = METHODS,
        few_shot_fractions: Sequence[float] | None = FRACTIONS, few_shot_methods: Sequence[str] | None = None,
        finetune: dict | None = None, pooling: str = "mean", n_boot: int = 1000, seed: int = 0,
        progress: bool = True, n_jobs: int = 1) -> dict:
    """Fit each of ``methods`` on the train split (fine-tuning stops early on val), score on test; few-shot curves.

    Only what is asked runs: embeddings only for the embedding methods, counts only for the count methods,
    few-shot curves for ``few_shot_methods`` (default: the requested methods that have one, see
    ``FEW_SHOT_METHODS``). The few-shot fit on 100% of the labels is the main fit (same rows, same seed), so
    it is reused, not refitted. ``progress``: bars on stderr over the fits, the fine-tuning epochs (with the
    validation AUROC) and the few-shot grid (with an ETA); each method's line on stdout as it finishes.
    ``n_jobs`` > 1: the fine-tunes (main and few-shot) run in that many worker processes (see
    :class:`FitPool`), started first so that the scikit-learn fits here overlap them; same numbers as serial.
    The text-* methods read ``prep.text`` (``prepare(..., text_model=...)``).
    """
    methods = check_methods(methods, ALL_METHODS)
    few_shot_methods = ([m for m in methods if m in FEW_SHOT_METHODS] if few_shot_methods is None
                        else check_methods(few_shot_methods, FEW_SHOT_METHODS))
    if not few_shot_fractions:
        few_shot_methods = []
    finetune = {"epochs": 8, "patience": 2, "head": "ffn", **(finetune or {})}
    y = prep.task.y
    split = np.asarray(split)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    for name, rows in (("train", tr), ("test", te)):
        if len(rows) == 0 or not 0 < y[rows].sum() < len(rows):
            raise ValueError(f"the {name} split needs both classes; it has {len(rows)} rows, {int(y[rows].sum())} "
                             f"positive (too few outcomes for this split)")
    wanted = set(methods) | set(few_shot_methods)
    if wanted & set(TEXT_METHODS) and prep.text is None:
        raise ValueError(f"{', '.join(m for m in TEXT_METHODS if m in wanted)} need the text vectors: "
                         f"prepare(..., text_model=DIR or 'default') (evaluate --text-model)")
    t0, seconds = time.perf_counter(), {}
    emb = E = C = T = None
    if wanted & {"embeddings-lr", "embeddings-counts", "text-behrt"}:
        from sklearn.preprocessing import StandardScaler

        from omop_behrt.vectors.embed import embed_sequences
        from omop_behrt.behrt.model import Behrt
        model = prep.model if prep.model is not None else Behrt.load(prep.model_dir)
        emb = embed_sequences(model, prep.seqs, pooling=pooling)
        E = StandardScaler().fit(emb[tr]).transform(emb).astype(np.float32)
        seconds["embed"] = time.perf_counter() - t0
    if wanted & {"counts-lr", "counts-gbm", "embeddings-counts", "text-counts"}:
        from omop_behrt.evaluation.baselines import CountFeatures
        t = time.perf_counter()
        index = prep.task.labels.select(["subject_id", "index_date"])
        cf = CountFeatures(persons=prep.persons).fit((prep.codes, index.take(pa.array(tr))))
        C = cf.transform((prep.codes, index))
        seconds["counts"] = time.perf_counter() - t
    if wanted & set(TEXT_METHODS):
        T = np.asarray(prep.text.vectors, dtype=np.float32)
        if T.shape[0] != len(y):
            raise ValueError(f"the text vectors have {T.shape[0]} rows, the task {len(y)}: prepare them for this task")
        seconds["text"] = float(prep.text.provenance.get("seconds", 0.0))
    gbm_cols = None
    widths: dict[str, int] = {}                # method -> columns of the matrix it was fitted on
    fitted: dict[tuple, np.ndarray] = {}      # (method, train rows, val rows) -> test predictions
    choices: dict[tuple, dict] = {}           # (method, train rows, val rows) -> fit_better's choice
    stacked: dict[str, tuple] = {}            # vectors ⊕ counts method -> (LR matrix, GBM matrix), all rows

    def key(name: str, rows: np.ndarray, val: np.ndarray) -> tuple:
        return name, rows.tobytes(), val.tobytes() if name in TORCH_METHODS + CHOICE_METHODS else b""

    def fit_predict(name: str, rows: np.ndarray, val: np.ndarray = va, bar: bool = progress) -> np.ndarray:
        k = key(name, rows, val)
        if k not in fitted:
            fitted[k] = _fit_predict(name, rows, val, bar)
        elif not isinstance(fitted[k], np.ndarray):                 # a fine-tune running in a worker
            fitted[k] = fitted[k].result()
        return fitted[k]

    def _fit_predict(name: str, rows: np.ndarray, val: np.ndarray, bar: bool) -> np.ndarray:
        nonlocal gbm_cols
        from omop_behrt.evaluation.baselines import counts_gbm, counts_lr, dense_top
        from omop_behrt.evaluation.heads import LinearProbe
        if name == "embeddings-lr":
            widths[name] = emb.shape[1]
            return LinearProbe().fit(emb[rows], y[rows]).predict_proba(emb[te])[:, 1]
        if name == "counts-lr":
            widths[name] = C.shape[1]
            return counts_lr(seed=seed).fit(C[rows], y[rows]).predict_proba(C[te])[:, 1]
        if name == "counts-gbm":
            Xd, gbm_cols = dense_top(C[tr], columns=gbm_cols)
            widths[name] = Xd.shape[1]
            sub = np.searchsorted(tr, rows)
            return counts_gbm(seed).fit(Xd[sub], y[rows]).predict_proba(dense_top(C[te], columns=gbm_cols)[0])[:, 1]
        if name in CHOICE_METHODS:                    # standardised vectors ⊕ counts: LR or GBM, chosen on val
            if name not in stacked:                   # built once; every few-shot fit takes rows of it
                if name == "embeddings-counts":
                    V = E
                else:                                 # the text vectors standardised as BEHRT's are (on train)
                    from sklearn.preprocessing import StandardScaler
                    V = StandardScaler().fit(T[tr]).transform(T).astype(np.float32)
                if gbm_cols is None:                  # the count columns counts-gbm reads (densest on train)
                    gbm_cols = dense_top(C[tr])[1]
                stacked[name] = (sp.hstack([sp.csr_matrix(V), C], format="csr"),
                                 np.hstack([V, dense_top(C, columns=gbm_cols)[0]]))
            X_lr, X_gbm = stacked[name]
            p, choice = fit_better(X_lr, X_gbm, y, rows, val, te, seed)
            choices[key(name, rows, val)] = choice
            widths[name] = (X_lr if choice["chosen"] == "lr" else X_gbm).shape[1]
            return p
        if name == "text-lr":
            widths[name] = T.shape[1]
            return LinearProbe().fit(T[rows], y[rows]).predict_proba(T[te])[:, 1]
        if name == "text-behrt":                      # the two patient vectors side by side, one linear probe
            TB = np.hstack([T, emb.astype(np.float32)])
            widths[name] = TB.shape[1]
            return LinearProbe().fit(TB[rows], y[rows]).predict_proba(TB[te])[:, 1]
        est = _finetuner(prep, name == "finetuned-pretrained", {**finetune, "progress": bar}, seed)
        est.fit(prep.seqs.select(rows), y[rows], eval_set=(prep.seqs.select(val), y[val]))
        return est.predict_proba(prep.seqs.select(te))[:, 1]

    # early stopping sees as small a share of the validation labels as training gets of its own
    shrink = lambda rows: va[subsample(y[va], len(rows) / len(tr), seed)]  # noqa: E731
    torch_jobs = [(m, tr, va, "100%") for m in methods if m in TORCH_METHODS]
    for f in sorted(few_shot_fractions or (), reverse=True):                 # the longest first
        sub = subsample(y[tr], f, seed)
        torch_jobs += [(m, tr[sub], shrink(sub), f"{f * 100:g}%") for m in few_shot_methods if m in TORCH_METHODS]
    pool = FitPool(min(n_jobs, len(torch_jobs)), progress) if n_jobs > 1 and len(torch_jobs) > 1 else None
    try:
        if pool is not None:
            for name, rows, val, what in torch_jobs:
                if key(name, rows, val) not in fitted:
                    fitted[key(name, rows, val)] = pool.submit(
                        f"{name.split('-')[1]} {what}", prep.model_dir, name == "finetuned-pretrained", finetune,
                        seed, prep.seqs.select(rows), y[rows], prep.seqs.select(val), y[val], prep.seqs.select(te))
        return _run_fits(prep, y, tr, va, te, methods, few_shot_methods, few_shot_fractions, fit_predict, shrink,
                         n_boot, seed, progress, seconds, pooling, finetune, emb, C, T, widths,
                         lambda name: choices.get(key(name, tr, va)))
    except BaseException:
        if pool is not None:
            pool.close(cancel=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()


def _run_fits(prep: Prepared, y, tr, va, te, methods, few_shot_methods, few_shot_fractions, fit_predict, shrink,
              n_boot: int, seed: int, progress: bool, seconds: dict, pooling: str, finetune: dict, emb, C, T,
              widths: dict, choice_of) -> dict:
    """:func:`run`'s fits, metrics and few-shot grid, in the order of ``methods``; the results dict.

    A :data:`CHOICE_METHODS` method's metrics carry its main fit's choice under ``classifier``.
    """
    from tqdm.auto import tqdm
    say = (lambda line: tqdm.write(line, file=sys.stdout)) if progress else (lambda line: None)
    results: dict = {}
    preds: dict[str, np.ndarray] = {}
    fits = tqdm(methods, desc="fits", unit="fit", disable=not progress, leave=False, dynamic_ncols=True)
    for name in fits:
        fits.set_postfix_str(name, refresh=True)
        t = time.perf_counter()
        preds[name] = fit_predict(name, tr)
        seconds[name] = time.perf_counter() - t
        results[name] = binary_metrics(y[te], preds[name], n_boot=n_boot, seed=seed)
        seconds[name + " metrics"] = time.perf_counter() - t - seconds[name]
        choice = choice_of(name)
        if choice is not None:
            results[name]["classifier"] = choice
        say(f"  {name:<22} AUROC {results[name]['auroc']:.3f}  AUPRC {results[name]['auprc']:.3f}  "
            f"({seconds[name]:.1f} s fit, {seconds[name + ' metrics']:.1f} s metrics)"
            + (f"  [{choice_text(choice)}]" if choice else ""))
    fits.close()
    shots = []
    if few_shot_methods:
        t = time.perf_counter()
        fs = {m: (lambda rows, m=m: fit_predict(m, tr[rows], shrink(rows))) for m in few_shot_methods}
        shots = few_shot(fs, y[tr], y[te], few_shot_fractions, seed=seed, n_boot=min(n_boot, 200),
                         progress=progress)
        seconds["few_shot"] = time.perf_counter() - t
    features = {}
    if C is not None:
        features["counts"] = int(C.shape[1])
    if emb is not None:
        features["embedding"] = int(emb.shape[1])
    if T is not None:
        features["text"] = int(T.shape[1])
    features["by_method"] = {m: int(widths[m]) for m in methods if m in widths}
    return {"task": {"definition": prep.task.definition, "attrition": prep.task.attrition},
            "leakage": prep.leakage,
            "n": {s: {"rows": int(len(r)), "positives": int(y[r].sum()),
                      "persons": int(len(np.unique(prep.task.labels["subject_id"].to_numpy()[r])))}
                  for s, r in (("train", tr), ("val", va), ("test", te))},
            "methods": results, "few_shot": shots, "pooling": pooling, "finetune": finetune, "seed": seed,
            "features": features, **({"text": _text_provenance(prep.text)} if T is not None else {}),
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "test_predictions": {"subject_id": prep.task.labels["subject_id"].to_numpy()[te].tolist(),
                                 "y": y[te].tolist(), **{k: v.tolist() for k, v in preds.items()}}}


def choice_text(choice: dict) -> str:
    """One line for a :func:`fit_better` choice: ``GBM kept: validation AUROC 0.741 vs LR 0.712``."""
    kept, other = choice["chosen"], "lr" if choice["chosen"] == "gbm" else "gbm"
    auc = choice.get("validation_auroc")
    if not auc:
        return f"{kept.upper()} kept ({choice.get('why', 'no validation AUROC')})"
    return f"{kept.upper()} kept: validation AUROC {auc[kept]:.3f} vs {other.upper()} {auc[other]:.3f}"


def _share(part, whole) -> float | None:
    """part / whole rounded to 4 places, None when either is missing or whole is 0."""
    ok = isinstance(part, (int, float)) and isinstance(whole, (int, float)) and whole
    return round(float(part) / float(whole), 4) if ok else None


def _text_provenance(text) -> dict:
    """What the results say about the text vectors: model, serialiser, description coverage (overall and by where
    the descriptions came from: shares of events), rows cut to the serialiser's budget, rows with no history and
    rows with a note (under ``rows``, so :func:`~omop_behrt.evaluation.metrics.shareable_results` suppresses small
    ones), time."""
    p = text.provenance
    cov = p.get("description_coverage") or {}
    by_origin = {str(k): _share(v, cov.get("events")) for k, v in sorted((cov.get("events_by_origin") or {}).items())}
    skipped = (p.get("skipped") or {}).get("no history before index")
    notes = p.get("notes") or {}
    rows = lambda v: {"rows": int(v)} if isinstance(v, (int, np.integer)) else None  # noqa: E731 - suppressed later
    return {"text_model": p.get("text_model"), "serializer_version": p.get("serializer_version"),
            "group": p.get("group"), "index_rule": p.get("index_rule"), "device": p.get("device"),
            "pooling": p.get("pooling"),
            "description_coverage": {"event_share": cov.get("event_share"), "code_share": cov.get("code_share"),
                                     "event_share_by_origin": by_origin},
            "truncated": rows(p.get("truncated")), "no_history": rows(skipped),
            "notes": {"mode": notes.get("mode"), "with_notes": rows(notes.get("rows_with_notes"))} if notes else None,
            "seconds": p.get("seconds")}


def run_behrt(prep: Prepared, split: np.ndarray, *, finetune: dict | None = None, seed: int = 0,
              progress: bool = True) -> dict:
    """BEHRT T1-T3 (``prep.task`` a MultiLabelTask): the multi-label head from pretrained weights and from
    scratch, and the training prevalence of each disease as a reference; BEHRT's per-patient scores on test."""
    from omop_behrt.evaluation.metrics import multilabel_metrics
    from omop_behrt.evaluation.heads import MultiLabelBehrt
    task = prep.task
    Y = np.asarray(task.Y)
    tr, va, te = (np.flatnonzero(np.asarray(split) == s) for s in ("train", "val", "test"))
    say = print if progress else (lambda *a, **k: None)
    finetune = {"epochs": 8, "patience": 2, **(finetune or {})}
    out = {"prevalence": multilabel_metrics(Y[te], np.tile(Y[tr].mean(0), (len(te), 1)), task.diseases)}
    for name, pretrained in (("multilabel-pretrained", True), ("multilabel-scratch", False)):
        est = MultiLabelBehrt(prep.model_dir, pretrained=pretrained, seed=seed, **finetune)
        est.fit(prep.seqs.select(tr), Y[tr], eval_set=(prep.seqs.select(va), Y[va]))
        out[name] = multilabel_metrics(Y[te], est.predict_proba(prep.seqs.select(te)), task.diseases)
    for name, m in out.items():
        say(f"  {name:<26} per-patient APS {m['aps']:.3f}  AUROC {m['auroc']:.3f}")
    return {"task": task.definition, "diseases": len(task.diseases), "leakage": prep.leakage,
            "n": {s: int(len(r)) for s, r in (("train", tr), ("val", va), ("test", te))}, "methods": out}

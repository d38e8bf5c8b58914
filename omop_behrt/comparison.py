"""The comparison: every method on one task, one person split, one run (what `omop-behrt evaluate` prints).

Methods: embeddings + logistic regression (the linear probe), counts + logistic regression, counts +
gradient boosting, embeddings + counts, and the encoder fine-tuned end to end from pretrained weights and
from scratch; then the few-shot curves. Inputs for every method are the events strictly before each row's
index date (censored in the extraction SQL when the source is a CDM, cut by the tokenizer and the count
query otherwise).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .evaluate import FRACTIONS, binary_metrics, few_shot, subsample
from .tasks import Task

METHODS = ("embeddings+LR", "counts+LR", "counts+GBM", "embeddings+counts", "fine-tuned (pretrained)",
           "fine-tuned (scratch)")
FEW_SHOT_METHODS = ("embeddings+LR", "counts+LR", "fine-tuned (pretrained)", "fine-tuned (scratch)")


@dataclass
class Prepared:
    """A task's rows with everything the methods read: sequences (aligned with rows), codes, persons."""

    task: Task
    seqs: object                  # omop_behrt.tokenizer.Sequences, row i = task row i
    codes: pa.Table               # subject_id, time, code (events before each person's last index date)
    persons: pa.Table
    model_dir: Path
    model: object = None          # the loaded omop_behrt.model.Behrt (loaded once, shared by the methods)


def prepare(model_dir: str | Path, source, task: Task, *, cdm_schema: str | None = None,
            vocab_schema: str | None = None, work_dir: str | Path | None = None, progress: bool = False) -> Prepared:
    """Extract (censored at the index dates when ``source`` is a CDM), map to the model's tokens, tokenise."""
    from .embed import censored_events, cut_times, index_sequences
    from .model import Behrt
    from .tokenizer import visit_table
    from .vocab import map_events
    model = Behrt.load(model_dir)
    tmp = None
    if work_dir is None:
        tmp = work_dir = Path(tempfile.mkdtemp(prefix="omop-behrt-eval-"))
    try:
        events, cdm = censored_events(source, task.labels, Path(work_dir), cdm_schema=cdm_schema,
                                      vocab_schema=vocab_schema, progress=progress)
        persons = events.persons()
        codes = events.read_events(["subject_id", "time", "code"])
        tokens = map_events(events, vocab=model.metadata.get("vocab", "source"), cdm=cdm, progress=False).tokens
        seqs, order = index_sequences(tokens, persons, visit_table(events), model,
                                      task.labels["subject_id"].to_numpy(), cut_times(task.labels))
        return Prepared(task, seqs.select(order), codes, persons, Path(model_dir), model)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _finetuner(prep: Prepared, pretrained: bool, finetune: dict, seed: int):
    from .heads import FineTunedBehrt
    return FineTunedBehrt(prep.model_dir, pretrained=pretrained, seed=seed, **finetune)


def run(prep: Prepared, split: np.ndarray, *, methods: Sequence[str] = METHODS,
        few_shot_fractions: Sequence[float] | None = FRACTIONS, few_shot_methods: Sequence[str] = FEW_SHOT_METHODS,
        finetune: dict | None = None, pooling: str = "mean", n_boot: int = 1000, seed: int = 0,
        progress: bool = True) -> dict:
    """Fit every method on the train split (fine-tuning stops early on val), score on test; few-shot curves."""
    from sklearn.preprocessing import StandardScaler

    from .baselines import CountFeatures, counts_gbm, counts_lr, dense_top
    from .embed import embed_sequences
    from .heads import LinearProbe
    from .model import Behrt
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {list(METHODS)}")
    finetune = {"epochs": 8, "patience": 2, "head": "ffn", **(finetune or {})}
    y = prep.task.y
    split = np.asarray(split)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    for name, rows in (("train", tr), ("test", te)):
        if len(rows) == 0 or not 0 < y[rows].sum() < len(rows):
            raise ValueError(f"the {name} split needs both classes; it has {len(rows)} rows, {int(y[rows].sum())} "
                             f"positive (too few outcomes for this split)")
    say = print if progress else (lambda *a, **k: None)
    t0, seconds = time.perf_counter(), {}
    model = prep.model if prep.model is not None else Behrt.load(prep.model_dir)
    emb = embed_sequences(model, prep.seqs, pooling=pooling)
    seconds["embed"] = time.perf_counter() - t0
    index = prep.task.labels.select(["subject_id", "index_date"])
    cf = CountFeatures(persons=prep.persons).fit((prep.codes, index.take(pa.array(tr))))
    C = cf.transform((prep.codes, index))
    E = StandardScaler().fit(emb[tr]).transform(emb).astype(np.float32)
    gbm_cols = None
    preds: dict[str, np.ndarray] = {}

    def fit_predict(name: str, rows: np.ndarray, val: np.ndarray = va) -> np.ndarray:
        nonlocal gbm_cols
        if name == "embeddings+LR":
            return LinearProbe().fit(emb[rows], y[rows]).predict_proba(emb[te])[:, 1]
        if name == "counts+LR":
            return counts_lr(seed=seed).fit(C[rows], y[rows]).predict_proba(C[te])[:, 1]
        if name == "counts+GBM":
            Xd, gbm_cols = dense_top(C[tr], columns=gbm_cols)
            sub = np.searchsorted(tr, rows)
            return counts_gbm(seed).fit(Xd[sub], y[rows]).predict_proba(dense_top(C[te], columns=gbm_cols)[0])[:, 1]
        if name == "embeddings+counts":
            EC = sp.hstack([sp.csr_matrix(E), C], format="csr")
            return counts_lr(seed=seed).fit(EC[rows], y[rows]).predict_proba(EC[te])[:, 1]
        pretrained = name == "fine-tuned (pretrained)"
        est = _finetuner(prep, pretrained, finetune, seed).fit(prep.seqs.select(rows), y[rows],
                                                               eval_set=(prep.seqs.select(val), y[val]))
        return est.predict_proba(prep.seqs.select(te))[:, 1]

    results: dict = {}
    for name in methods:
        t = time.perf_counter()
        preds[name] = fit_predict(name, tr)
        seconds[name] = time.perf_counter() - t
        results[name] = binary_metrics(y[te], preds[name], n_boot=n_boot, seed=seed)
        say(f"  {name:<26} AUROC {results[name]['auroc']:.3f}  AUPRC {results[name]['auprc']:.3f}  "
            f"({seconds[name]:.1f} s)")
    shots = []
    if few_shot_fractions:
        t = time.perf_counter()
        # early stopping sees as small a share of the validation labels as training gets of its own
        shrink = lambda rows: va[subsample(y[va], len(rows) / len(tr), seed)]  # noqa: E731
        fs = {m: (lambda rows, m=m: fit_predict(m, tr[rows], shrink(rows))) for m in few_shot_methods}
        shots = few_shot(fs, y[tr], y[te], few_shot_fractions, seed=seed, n_boot=min(n_boot, 200))
        seconds["few_shot"] = time.perf_counter() - t
    return {"task": {"definition": prep.task.definition, "attrition": prep.task.attrition},
            "n": {s: {"rows": int(len(r)), "positives": int(y[r].sum()),
                      "persons": int(len(np.unique(prep.task.labels["subject_id"].to_numpy()[r])))}
                  for s, r in (("train", tr), ("val", va), ("test", te))},
            "methods": results, "few_shot": shots, "pooling": pooling, "finetune": finetune, "seed": seed,
            "features": {"counts": int(C.shape[1]), "embedding": int(emb.shape[1])},
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "test_predictions": {"subject_id": prep.task.labels["subject_id"].to_numpy()[te].tolist(),
                                 "y": y[te].tolist(), **{k: v.tolist() for k, v in preds.items()}}}


def run_behrt(prep: Prepared, split: np.ndarray, *, finetune: dict | None = None, seed: int = 0,
              progress: bool = True) -> dict:
    """BEHRT T1-T3 (``prep.task`` a MultiLabelTask): the multi-label head from pretrained weights and from
    scratch, and the training prevalence of each disease as a reference; BEHRT's per-patient scores on test."""
    from .evaluate import multilabel_metrics
    from .heads import MultiLabelBehrt
    task = prep.task
    Y = np.asarray(task.Y)
    tr, va, te = (np.flatnonzero(np.asarray(split) == s) for s in ("train", "val", "test"))
    say = print if progress else (lambda *a, **k: None)
    finetune = {"epochs": 8, "patience": 2, **(finetune or {})}
    out = {"prevalence": multilabel_metrics(Y[te], np.tile(Y[tr].mean(0), (len(te), 1)), task.diseases)}
    for name, pretrained in (("multi-label (pretrained)", True), ("multi-label (scratch)", False)):
        est = MultiLabelBehrt(prep.model_dir, pretrained=pretrained, seed=seed, **finetune)
        est.fit(prep.seqs.select(tr), Y[tr], eval_set=(prep.seqs.select(va), Y[va]))
        out[name] = multilabel_metrics(Y[te], est.predict_proba(prep.seqs.select(te)), task.diseases)
    for name, m in out.items():
        say(f"  {name:<26} per-patient APS {m['aps']:.3f}  AUROC {m['auroc']:.3f}")
    return {"task": task.definition, "diseases": len(task.diseases),
            "n": {s: int(len(r)) for s, r in (("train", tr), ("val", va), ("test", te))}, "methods": out}

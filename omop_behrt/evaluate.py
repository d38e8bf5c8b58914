"""Metrics a clinical reader trusts: discrimination, calibration, bootstrap CIs, BEHRT's per-patient scores, few-shot.

- :func:`binary_metrics`: AUROC, AUPRC (average precision), Brier, calibration intercept (calibration-in-the-
  large: logistic recalibration with logit(p) as offset) and slope (Cox: logistic regression of y on
  logit(p)), the calibration curve (quantile bins), ROC / PR curves, and 95% percentile bootstrap CIs.
- :func:`multilabel_metrics`: BEHRT's per-patient average precision and AUROC averaged over patients, and
  per-disease AUROC / AUPRC.
- :func:`few_shot`: train on 1/5/10/25/100% of the training labels (nested, seeded) for several methods.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_auc_score, roc_curve

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)
_EPS = 1e-6


def format_ci(m: dict, k: str) -> str:
    """``m[k]`` with its 95% CI (``m[k + "_ci"]``) when there is one: ``0.812 (0.790-0.833)``."""
    ci = m.get(f"{k}_ci")
    return f"{m[k]:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{m[k]:.3f}"


def write_results(results: dict, path: str | Path) -> Path:
    """A comparison's results as JSON (numpy scalars as floats): the CLI's --json and the report's results.json."""
    path = Path(path)
    path.write_text(json.dumps(results, indent=1, default=float))
    return path


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _newton_logistic(X: np.ndarray, y: np.ndarray, offset: np.ndarray, iters: int = 50) -> np.ndarray:
    """Unpenalised logistic regression by Newton-Raphson (tiny designs: 1-2 columns)."""
    beta = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ beta + offset)))
        w = p * (1 - p) + 1e-12
        step = np.linalg.solve(X.T @ (X * w[:, None]) + 1e-9 * np.eye(X.shape[1]), X.T @ (y - p))
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def calibration(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(intercept, slope): calibration-in-the-large (offset logit p) and the Cox recalibration slope."""
    lp = _logit(np.asarray(p, float))
    y = np.asarray(y, float)
    intercept = _newton_logistic(np.ones((len(y), 1)), y, lp)[0]
    slope = _newton_logistic(np.column_stack([np.ones(len(y)), lp]), y, np.zeros(len(y)))[1]
    return float(intercept), float(slope)


def _point(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    intercept, slope = calibration(y, p)
    return {"auroc": float(roc_auc_score(y, p)), "auprc": float(average_precision_score(y, p)),
            "brier": float(brier_score_loss(y, p)), "calibration_intercept": intercept, "calibration_slope": slope}


def binary_metrics(y, p, *, n_boot: int = 1000, seed: int = 0, curves: bool = True, n_bins: int = 10) -> dict:
    """Point estimates, 95% bootstrap CIs (``<name>_ci``) and, with ``curves``, ROC/PR/calibration curves."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y and p must be 1-D and the same length; got {y.shape} and {p.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError(f"metrics need both classes in y; got only {np.unique(y).tolist()} ({len(y)} rows)")
    out: dict = {"n": int(len(y)), "positives": int(y.sum()), "prevalence": float(y.mean()), **_point(y, p)}
    if n_boot:
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            i = rng.integers(0, len(y), len(y))
            if 0 < y[i].sum() < len(i):
                boots.append(_point(y[i], p[i]))
        for k in boots[0] if boots else []:
            v = np.array([b[k] for b in boots])
            out[f"{k}_ci"] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        out["n_boot"] = len(boots)
    if curves:
        fpr, tpr, _ = roc_curve(y, p)
        prec, rec, _ = precision_recall_curve(y, p)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
        out["curves"] = {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
                         "pr": {"precision": prec.tolist(), "recall": rec.tolist()},
                         "calibration": {"predicted": prob_pred.tolist(), "observed": prob_true.tolist()}}
    return out


def multilabel_metrics(Y, P, diseases: Sequence[str] | None = None) -> dict:
    """BEHRT's scores: per-patient APS and AUROC averaged over patients, plus per-disease AUROC / AUPRC.

    A patient counts for APS when they have at least one positive label, for AUROC when they have both
    positive and negative labels; a disease counts when it has both classes among the patients.
    """
    Y, P = np.asarray(Y).astype(int), np.asarray(P, float)
    if Y.shape != P.shape or Y.ndim != 2:
        raise ValueError(f"Y and P must be 2-D (patients x diseases) and the same shape; got {Y.shape}, {P.shape}")
    pos = Y.sum(1)
    aps = [average_precision_score(Y[i], P[i]) for i in np.flatnonzero(pos > 0)]
    auc = [roc_auc_score(Y[i], P[i]) for i in np.flatnonzero((pos > 0) & (pos < Y.shape[1]))]
    per = {}
    names = list(diseases) if diseases is not None else [str(k) for k in range(Y.shape[1])]
    for k in np.flatnonzero((Y.sum(0) > 0) & (Y.sum(0) < Y.shape[0])):
        per[names[k]] = {"positives": int(Y[:, k].sum()), "auroc": float(roc_auc_score(Y[:, k], P[:, k])),
                         "auprc": float(average_precision_score(Y[:, k], P[:, k]))}
    return {"patients": int(Y.shape[0]), "aps_patients": len(aps), "auroc_patients": len(auc),
            "aps": float(np.mean(aps)) if aps else float("nan"),
            "auroc": float(np.mean(auc)) if auc else float("nan"), "per_disease": per}


def subsample(y_train: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a seeded, stratified ``fraction`` of the training rows (at least one of each class).

    Subsets are nested: the 5% subset contains the 1% one (one permutation per class, prefixes of it).
    """
    y_train = np.asarray(y_train).astype(int)
    rng = np.random.default_rng(seed)
    idx = []
    for c in (0, 1):
        rows = np.flatnonzero(y_train == c)
        perm = rows[rng.permutation(len(rows))]
        idx.append(perm[:max(1, int(round(fraction * len(rows))))])
    return np.sort(np.concatenate(idx))


def few_shot(methods: dict[str, Callable[[np.ndarray], np.ndarray]], y_train: np.ndarray, y_test: np.ndarray,
             fractions: Sequence[float] = FRACTIONS, seed: int = 0, n_boot: int = 200) -> list[dict]:
    """For each fraction and method: fit on that training subset (``method(train_rows) -> p_test``) and score.

    Every method sees the same subset at a given fraction (Med-BERT's small-data comparison).
    """
    rows = []
    for f in fractions:
        sub = subsample(y_train, f, seed)
        for name, fit_predict in methods.items():
            p = fit_predict(sub)
            m = binary_metrics(y_test, p, n_boot=n_boot, seed=seed, curves=False)
            rows.append({"method": name, "fraction": f, "n_train": int(len(sub)),
                         "train_positives": int(np.asarray(y_train)[sub].sum()), "auroc": m["auroc"],
                         "auroc_ci": m.get("auroc_ci"), "auprc": m["auprc"], "auprc_ci": m.get("auprc_ci")})
    return rows

"""Metrics a clinical reader trusts: discrimination, calibration, bootstrap CIs, BEHRT's per-patient scores, few-shot.

- :func:`binary_metrics`: AUROC, AUPRC (average precision), Brier, calibration intercept (calibration-in-the-
  large: logistic recalibration with logit(p) as offset) and slope (Cox: logistic regression of y on
  logit(p)), the calibration curve (quantile bins), ROC / PR curves, and 95% percentile bootstrap CIs.
- :func:`multilabel_metrics`: BEHRT's per-patient average precision and AUROC averaged over patients, and
  per-disease AUROC / AUPRC.
- :func:`few_shot`: train on 1/5/10/25/100% of the training labels (nested, seeded) for several methods.

What leaves a site is aggregates only (DESIGN.md): curves step over groups of at least ``min_count`` persons
(:func:`curves`), :func:`write_results` writes :func:`shareable_results` (no per-person predictions, counts
below ``min_count`` as ``"<10"``); per-person predictions go to their own file only on request
(:func:`write_predictions`).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.special import expit
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from omop_behrt.events import write_json
from omop_behrt.shareable import COUNT_KEYS, MIN_COUNT, shown_count, suppressed

from omop_behrt.choices import FRACTIONS
_EPS = 1e-6


def format_ci(m: dict, k: str) -> str:
    """``m[k]`` with its 95% CI (``m[k + "_ci"]``) when there is one: ``0.812 (0.790-0.833)``."""
    ci = m.get(f"{k}_ci")
    return f"{m[k]:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{m[k]:.3f}"


def _group_ends(p_sorted: np.ndarray, min_count: int, groups: int) -> np.ndarray:
    """Ends of up to ``groups`` consecutive groups of sorted scores, each of >= ``min_count`` rows, ties unsplit."""
    n = len(p_sorted)
    k = max(1, min(groups, n // max(min_count, 1)))
    bounds = np.r_[np.flatnonzero(p_sorted[1:] != p_sorted[:-1]) + 1, n]      # where the score changes
    ends = np.unique(bounds[np.searchsorted(bounds, np.round(np.arange(1, k + 1) * n / k).astype(int))])
    kept, start = [], 0
    for e in ends:                                           # at most `groups` iterations
        if e - start >= min_count:
            kept.append(int(e))
            start = e
    if not kept or kept[-1] != n:                           # a short tail joins the last group
        kept = kept[:-1] + [n]
    return np.asarray(kept, int)


def curves(y, p, *, min_count: int = MIN_COUNT, n_bins: int = 10, max_points: int = 100) -> dict | None:
    """ROC, PR and calibration curves whose every step spans >= ``min_count`` persons (None: too few outcomes).

    A curve over all thresholds has one step per person: with the outcome of each step it is a list of the
    test set's (score rank, outcome) pairs. Here the thresholds are quantiles of the scores (at most
    ``max_points``), calibration uses ``n_bins`` quantile bins, and each step or bin holds at least
    ``min_count`` persons (``persons`` per calibration bin says how many). With fewer than ``min_count``
    positives or negatives there is no curve.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    P, N = int(y.sum()), int(len(y) - y.sum())
    if min(P, N) < min_count:
        return None
    order = np.argsort(-p, kind="stable")
    ends = _group_ends(p[order], min_count, max_points)
    tp = np.cumsum(y[order])[ends - 1]
    fp = ends - tp
    asc = order[::-1]
    cal_ends = _group_ends(p[asc], min_count, n_bins)
    starts = np.r_[0, cal_ends[:-1]]
    sum_p, sum_y = np.r_[0, np.cumsum(p[asc])], np.r_[0, np.cumsum(y[asc])]
    size = cal_ends - starts
    return {"roc": {"fpr": np.r_[0, fp / N].tolist(), "tpr": np.r_[0, tp / P].tolist()},
            "pr": {"precision": np.r_[1, tp / ends].tolist(), "recall": np.r_[0, tp / P].tolist()},
            "calibration": {"predicted": ((sum_p[cal_ends] - sum_p[starts]) / size).tolist(),
                            "observed": ((sum_y[cal_ends] - sum_y[starts]) / size).tolist(),
                            "persons": size.tolist()}}


def curves_problem(m: dict, min_count: int = MIN_COUNT) -> str | None:
    """Why a metrics dict's curves could show fewer than ``min_count`` persons per step (None: they cannot)."""
    c = m.get("curves")
    if not c:
        return None
    n, pos = m.get("n"), m.get("positives")
    if not isinstance(n, int) or not isinstance(pos, int):
        return "curves without integer n and positives: their steps cannot be checked"
    if min(pos, n - pos) < min_count:
        return f"curves over fewer than {min_count} positive or negative outcomes"
    roc = c.get("roc") or {}
    step = np.diff(np.asarray(roc.get("tpr", []), float) * pos + np.asarray(roc.get("fpr", []), float) * (n - pos))
    if len(step) and np.round(step).min() < min_count:
        return f"a ROC curve step spans {int(np.round(step).min())} persons (< {min_count}): one point per person"
    cal = c.get("calibration") or {}
    if "persons" not in cal and len(cal.get("predicted", [])) > n // min_count:
        return f"{len(cal['predicted'])} calibration bins over {n} persons: fewer than {min_count} in a bin"
    if any(v < min_count for v in cal.get("persons", [])):
        return f"a calibration bin of fewer than {min_count} persons"
    return None


def _suppress(obj, min_count: int, counts: bool = False):
    """Counts (``COUNT_KEYS``, every value under ``attrition`` or ``n``) in 1..min_count-1 -> ``"<10"``."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            is_count = counts or k in COUNT_KEYS
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and is_count:
                out[k] = shown_count(v, min_count)
            else:
                out[k] = _suppress(v, min_count, k in ("attrition", "n"))
        for total, part in (("n", "positives"), ("rows", "positives"), ("n_train", "train_positives")):
            if not all(isinstance(obj.get(k), (int, np.integer)) for k in (total, part)):
                continue
            if 0 < int(obj[total]) - int(obj[part]) < min_count or isinstance(out.get(part), str):
                out[part] = suppressed(min_count)                  # the complement gives it back otherwise
                if "prevalence" in out:
                    out["prevalence"] = None
        return out
    if isinstance(obj, list):
        return [_suppress(v, min_count, False) for v in obj]
    return obj


def shareable_results(results: dict, min_count: int = MIN_COUNT) -> dict:
    """A copy of a comparison's results fit to leave the site: aggregates only, counts below ``min_count`` hidden.

    Drops the per-person ``test_predictions`` (after redrawing each method's curves from them at
    ``min_count``); withholds curves whose steps would show fewer than ``min_count`` persons; shows every
    count of persons in 1..min_count-1 as ``"<10"`` (and a prevalence that would give it back as null).
    """
    res = copy.deepcopy(results)
    preds = res.pop("test_predictions", None)
    for name, m in res.get("methods", {}).items():
        if not isinstance(m, dict):
            continue
        if preds is not None and name in preds and "curves" in m:
            m["curves"] = curves(preds["y"], preds[name], min_count=min_count)
        why = curves_problem(m, min_count)
        if why or ("curves" in m and m["curves"] is None):
            m["curves"] = None
            m["curves_withheld"] = why or m.get("curves_withheld") or (
                f"fewer than {min_count} positive or negative outcomes in the test set")
    out = _suppress(res, min_count)
    attrition = out.get("task", {}).get("attrition")
    if isinstance(attrition, dict):            # target entries = the exclusions + kept
        _complement(attrition, [k for k in attrition if k.startswith("excluded")], "target entries")
    splits = out.get("n")
    if isinstance(splits, dict) and all(isinstance(v, dict) for v in splits.values()):
        cells = {s: v.get("positives") for s, v in splits.items()}       # the task's outcomes = their sum
        _complement(cells, list(cells), None)
        for s, v in cells.items():
            splits[s]["positives"] = v
    return out


#: a cell hidden only so that a suppressed one cannot be got back by subtraction (its own count is >= min_count)
COMPLEMENT = "suppressed"


def _complement(cells: dict, group: list, total: str | None) -> None:
    """Complementary suppression: when one cell of a group that sums to a shown total is hidden, hide another.

    The smallest shown cell of ``group`` goes too, or the ``total`` when the group has no other cell.
    """
    hidden = [k for k in group if isinstance(cells.get(k), str)]
    shown = sorted((cells[k], k) for k in group if isinstance(cells.get(k), int))
    if len(hidden) != 1:
        return
    if shown:
        cells[shown[0][1]] = COMPLEMENT
    elif total is not None and isinstance(cells.get(total), int):
        cells[total] = COMPLEMENT


def write_results(results: dict, path: str | Path, min_count: int = MIN_COUNT) -> Path:
    """A comparison's :func:`shareable_results` as JSON: the CLI's --json and the report's results.json."""
    path = Path(path)
    write_json(shareable_results(results, min_count), path, default=float)
    return path


def write_predictions(results: dict, path: str | Path) -> Path:
    """Per-person test predictions (subject_id, y, one column per method) to CSV, or Parquet for ``.parquet``.

    Patient-level data: for use inside the site only (``check-shareable`` fails on it).
    """
    import pyarrow as pa
    preds = results.get("test_predictions")
    if not preds:
        raise ValueError("these results hold no per-person predictions (binary PLP comparisons have them)")
    table = pa.table({"subject_id": pa.array(preds["subject_id"], pa.int64()), "y": pa.array(preds["y"], pa.int8()),
                      **{k: pa.array(v, pa.float64()) for k, v in preds.items() if k not in ("subject_id", "y")}})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        pq.write_table(table, tmp)
    else:
        import pyarrow.csv as pacsv
        pacsv.write_csv(table, tmp)
    os.replace(tmp, path)
    return path


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _newton_logistic(X: np.ndarray, y: np.ndarray, offset: np.ndarray, iters: int = 50) -> np.ndarray:
    """Unpenalised logistic regression by Newton-Raphson (tiny designs: 1-2 columns)."""
    beta = np.zeros(X.shape[1])
    for _ in range(iters):
        p = expit(X @ beta + offset)
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


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The bootstrap's row draws, (n_boot, n): one ``rng.integers(0, n, n)`` per replicate, as a loop draws them."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n) for _ in range(n_boot)]) if n_boot else np.zeros((0, n), np.int64)


def _newton_weighted(X: np.ndarray, y: np.ndarray, w: np.ndarray, offset: np.ndarray, iters: int = 50) -> np.ndarray:
    """:func:`_newton_logistic` for many row weightings at once: X (n, k<=2), w (B, n) -> beta (B, k).

    A replicate's weights are how often each row was drawn, so this is the fit on the resampled rows; each
    replicate stops as the single fit does (after the step that is below 1e-10).
    """
    B, k = w.shape[0], X.shape[1]
    beta, active = np.zeros((B, k)), np.ones(B, bool)
    for _ in range(iters):
        with np.errstate(over="ignore"):                                         # a diverging fit, as in the loop
            p = 1 / (1 + np.exp(-(beta @ X.T + offset)))                         # (B, n)
        ww = w * (p * (1 - p) + 1e-12)
        H = np.einsum("bn,ni,nj->bij", ww, X, X) + 1e-9 * np.eye(k)
        g = (w * (y - p)) @ X                                                    # (B, k)
        step = np.linalg.solve(H, g[..., None])[..., 0]
        step[~active] = 0
        beta += step
        active &= np.abs(step).max(1) >= 1e-10
        if not active.any():
            break
    return beta


def _ranking(w: np.ndarray, ys: np.ndarray, order: np.ndarray, starts: np.ndarray, pos_w: np.ndarray,
             neg_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision under row weights w (B, n), rows sorted by score (``order``, tie ``starts``)."""
    ws = w[:, order]
    gp = np.add.reduceat(ws * ys, starts, axis=1)                                 # positives per tie group
    gn = np.add.reduceat(ws * (1 - ys), starts, axis=1)
    below = np.cumsum(gn, axis=1) - gn                                            # negatives scored lower
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (gp * (below + 0.5 * gn)).sum(1) / (pos_w * neg_w)
        tp, fp = np.cumsum(gp[:, ::-1], axis=1), np.cumsum(gn[:, ::-1], axis=1)  # thresholds high to low
        prec = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        auprc = (gp[:, ::-1] * prec).sum(1) / pos_w
    return auroc, auprc


def ranking_bootstrap(y: np.ndarray, p: np.ndarray, draws: np.ndarray, chunk_cells: int = 4_000_000
                      ) -> dict[str, np.ndarray]:
    """AUROC and average precision on the resamples ``draws`` ((B, n) row indices; see :func:`_resamples`), NaN
    where a resample has one class. The same draws for every method of a task make a paired bootstrap."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    n = len(y)
    order = np.argsort(p, kind="stable")
    ys, ps = y[order].astype(float), p[order]
    starts = np.r_[0, np.flatnonzero(ps[1:] != ps[:-1]) + 1] if n else np.zeros(0, np.int64)
    out: dict[str, list] = {"auroc": [], "auprc": []}
    step = max(1, chunk_cells // max(n, 1))
    for c in range(0, len(draws), step):
        d = draws[c:c + step]
        w = np.zeros((len(d), n))
        np.add.at(w, (np.repeat(np.arange(len(d)), n), d.ravel()), 1.0)
        pos_w = w @ y
        auroc, auprc = _ranking(w, ys, order, starts, pos_w, n - pos_w)
        one_class = (pos_w == 0) | (pos_w == n)
        auroc[one_class], auprc[one_class] = np.nan, np.nan
        out["auroc"].append(auroc)
        out["auprc"].append(auprc)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def bootstrap_points(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int = 0, chunk_cells: int = 4_000_000
                     ) -> dict[str, np.ndarray]:
    """:func:`_point`'s metrics on ``n_boot`` seeded resamples, vectorised (replicates as row-weight vectors).

    The same draws and the same numbers (to rounding) as calling ``_point(y[i], p[i])`` per replicate, minus
    replicates with one class only; AUROC, average precision, Brier and both calibration fits are weighted
    sums over the rows sorted once by score, computed ``chunk_cells / n`` replicates at a time.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    n = len(y)
    draws = _resamples(n, n_boot, seed)
    order = np.argsort(p, kind="stable")
    ys, ps = y[order].astype(float), p[order]
    starts = np.r_[0, np.flatnonzero(ps[1:] != ps[:-1]) + 1]                     # groups of tied scores
    lp = _logit(p)
    X1, X2 = np.ones((n, 1)), np.column_stack([np.ones(n), lp])
    out: dict[str, list] = {k: [] for k in ("auroc", "auprc", "brier", "calibration_intercept", "calibration_slope")}
    step = max(1, chunk_cells // max(n, 1))
    for c in range(0, len(draws), step):
        d = draws[c:c + step]
        w = np.zeros((len(d), n))
        np.add.at(w, (np.repeat(np.arange(len(d)), n), d.ravel()), 1.0)         # w[b, i]: draws of row i
        pos_w = w @ y
        keep = (pos_w > 0) & (pos_w < n)
        w, pos_w = w[keep], pos_w[keep]
        if not len(w):
            continue
        neg_w = n - pos_w
        auroc, auprc = _ranking(w, ys, order, starts, pos_w, neg_w)
        out["auroc"].append(auroc)
        out["auprc"].append(auprc)
        out["brier"].append(w @ (p - y) ** 2 / n)
        out["calibration_intercept"].append(_newton_weighted(X1, y, w, lp)[:, 0])
        out["calibration_slope"].append(_newton_weighted(X2, y, w, np.zeros(n))[:, 1])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def binary_metrics(y, p, *, n_boot: int = 1000, seed: int = 0, curves: bool = True, n_bins: int = 10,
                   min_count: int = MIN_COUNT) -> dict:
    """Point estimates, 95% bootstrap CIs (``<name>_ci``) and, with ``curves``, ROC/PR/calibration curves.

    The curves step over groups of >= ``min_count`` persons (see :func:`curves`); None, with the reason in
    ``curves_withheld``, when the test set has fewer than ``min_count`` positives or negatives.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y and p must be 1-D and the same length; got {y.shape} and {p.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError(f"metrics need both classes in y; got only {np.unique(y).tolist()} ({len(y)} rows)")
    out: dict = {"n": int(len(y)), "positives": int(y.sum()), "prevalence": float(y.mean()), **_point(y, p)}
    if n_boot:
        boots = bootstrap_points(y, p, n_boot, seed)
        kept = len(next(iter(boots.values())))
        for k, v in boots.items() if kept else ():
            out[f"{k}_ci"] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        out["n_boot"] = kept
    if curves:
        out["curves"] = _curves(y, p, min_count=min_count, n_bins=n_bins)
        if out["curves"] is None:
            out["curves_withheld"] = f"fewer than {min_count} positive or negative outcomes in the test set"
    return out


_curves = curves          # binary_metrics' ``curves`` flag shadows the function inside it


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
             fractions: Sequence[float] = FRACTIONS, seed: int = 0, n_boot: int = 200,
             progress: bool = False) -> list[dict]:
    """For each fraction and method: fit on that training subset (``method(train_rows) -> p_test``) and score.

    Every method sees the same subset at a given fraction (Med-BERT's small-data comparison). ``progress``:
    a bar over the (fraction, method) fits, with the ETA, on stderr.
    """
    from tqdm.auto import tqdm
    grid = [(f, name) for f in fractions for name in methods]
    subs = {f: subsample(y_train, f, seed) for f in fractions}
    rows = []
    bar = tqdm(grid, desc="few-shot", unit="fit", disable=not progress, leave=False, dynamic_ncols=True)
    for f, name in bar:
        bar.set_postfix_str(f"{name} at {f * 100:g}%", refresh=True)
        sub = subs[f]
        p = methods[name](sub)
        m = binary_metrics(y_test, p, n_boot=n_boot, seed=seed, curves=False)
        rows.append({"method": name, "fraction": f, "n_train": int(len(sub)),
                     "train_positives": int(np.asarray(y_train)[sub].sum()), "auroc": m["auroc"],
                     "auroc_ci": m.get("auroc_ci"), "auprc": m["auprc"], "auprc_ci": m.get("auprc_ci")})
    bar.close()
    return rows


# -- degenerate results -------------------------------------------------------------------------------
#: a calibration slope outside this range says the scores are near-constant or wildly over-confident
SANE_SLOPE = (0.2, 5.0)


def result_warnings(results: dict) -> list[dict]:
    """Results a reader should not take at face value: one dict (method, metric, value, why) each.

    - calibration slope outside :data:`SANE_SLOPE` (e.g. 275 from a model fine-tuned from scratch whose scores
      barely vary: the slope is then the inverse of a tiny spread, not a property of a usable model);
    - a Brier score no better than the prevalence model (everyone gets the training prevalence);
    - an AUROC whose 95% CI contains 0.5 (no evidence of better than chance discrimination);
    - leakage: the encoder was pretrained on events inside the task's outcome windows (``results["leakage"]``,
      from :func:`omop_behrt.tasks.labels.pretraining_overlap`), which makes every encoder-based score optimistic.
    """
    out = []
    if results.get("leakage"):
        out.append({"method": "encoder-based methods", "metric": "leakage", "value": "",
                    "why": str(results["leakage"])})
    train = (results.get("n") or {}).get("train") or {}
    prior = (train["positives"] / train["rows"] if isinstance(train.get("positives"), int)
             and isinstance(train.get("rows"), int) and train["rows"] else None)
    for name, m in (results.get("methods") or {}).items():
        slope = m.get("calibration_slope")
        if isinstance(slope, (int, float)) and np.isfinite(slope) and not SANE_SLOPE[0] <= slope <= SANE_SLOPE[1]:
            why = ("the predicted risks barely vary between persons (near-constant scores), so any small "
                   "spread is stretched to fit: the model learned little, and its risks are not usable as such"
                   if slope > SANE_SLOPE[1] else
                   "the scores run against the outcome" if slope < 0 else
                   "the predicted risks are far too extreme (over-fitted): high risks are much too high, low "
                   "ones much too low")
            out.append({"method": name, "metric": "calibration slope", "value": f"{slope:.2f}",
                        "why": f"calibration slope {slope:.2f} (ideal 1; sane {SANE_SLOPE[0]:g}-{SANE_SLOPE[1]:g}): "
                               f"{why}."})
        prev = m.get("prevalence")
        if prior is not None and isinstance(prev, float) and isinstance(m.get("brier"), float):
            ref = prev * (1 - prior) ** 2 + (1 - prev) * prior ** 2
            if m["brier"] >= ref:
                out.append({"method": name, "metric": "Brier", "value": f"{m['brier']:.3f}",
                            "why": f"Brier {m['brier']:.3f} is no better than {ref:.3f}, the score of giving "
                                   f"everyone the training outcome rate ({prior * 100:.1f}%): its risks add "
                                   f"nothing over the outcome rate."})
        ci = m.get("auroc_ci")
        if ci and ci[0] <= 0.5 <= ci[1]:
            out.append({"method": name, "metric": "AUROC", "value": f"{m['auroc']:.3f}",
                        "why": f"AUROC {m['auroc']:.3f}, 95% CI {ci[0]:.3f}-{ci[1]:.3f} contains 0.5: no "
                               f"evidence that it ranks persons with the outcome above those without better "
                               f"than chance."})
    return out

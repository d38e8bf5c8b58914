"""Vectors ⊕ counts fit both LR and the GBM and keep the better on the validation rows (comparison.fit_better):
GBM kept when it wins on validation, LR when it does, LR when validation cannot choose, and the test rows never
touch the choice; in the comparison, the choice is in each method's results and changes with the validation
data only."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from omop_behrt.evaluation import comparison
from omop_behrt.evaluation.baselines import counts_gbm, counts_lr
from omop_behrt.evaluation.comparison import CHOICE_RULE, fit_better


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A person-free 60/20/20 split of range(n)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:int(.6 * n)]), np.sort(order[int(.6 * n):int(.8 * n)]), np.sort(order[int(.8 * n):])


def _ring(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The outcome when |x0| > 0.7: a threshold a tree finds and a linear score cannot (symmetric in x0)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 6)).astype(np.float32)
    return X, (np.abs(X[:, 0]) > 0.7).astype(int)


def _linear(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The outcome from a weak signal spread over 60 features, few rows: what a linear model does best."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 60)).astype(np.float32)
    score = X @ np.full(60, 0.25) + rng.normal(scale=1.0, size=n)
    return X, (score > np.quantile(score, 0.7)).astype(int)


def test_gbm_is_kept_when_it_wins_on_validation():
    X, y = _ring()
    tr, va, te = _rows(len(y))
    p, choice = fit_better(sp.csr_matrix(X), X, y, tr, va, te, seed=0)
    assert choice["chosen"] == "gbm" and choice["rule"] == CHOICE_RULE
    auc = choice["validation_auroc"]
    assert auc["gbm"] > 0.95 and auc["lr"] < 0.7                 # the tree finds the threshold, the line does not
    gbm = counts_gbm(0).fit(X[tr], y[tr])                        # the kept model is the GBM fitted on train only
    assert auc["gbm"] == pytest.approx(roc_auc_score(y[va], gbm.predict_proba(X[va])[:, 1]), abs=1e-4)
    assert np.array_equal(p, gbm.predict_proba(X[te])[:, 1])
    assert roc_auc_score(y[te], p) > 0.95


def test_lr_is_kept_when_it_wins_on_validation():
    X, y = _linear()
    tr, va, te = _rows(len(y))
    p, choice = fit_better(sp.csr_matrix(X), X, y, tr, va, te, seed=0)
    assert choice["chosen"] == "lr" and choice["validation_auroc"]["lr"] > choice["validation_auroc"]["gbm"]
    lr = counts_lr(seed=0).fit(sp.csr_matrix(X)[tr], y[tr])
    assert np.array_equal(p, lr.predict_proba(sp.csr_matrix(X)[te])[:, 1])


@pytest.mark.parametrize("data", [_ring, _linear])
def test_test_rows_never_touch_the_choice(data):
    X, y = data()
    tr, va, te = _rows(len(y))
    p, choice = fit_better(sp.csr_matrix(X), X, y, tr, va, te, seed=0)
    rng = np.random.default_rng(1)
    X2, y2 = X.copy(), y.copy()
    X2[te] = rng.normal(size=(len(te), X.shape[1])) * 5          # other features and labels on the test rows
    y2[te] = 1 - y2[te]
    p2, choice2 = fit_better(sp.csr_matrix(X2), X2, y2, tr, va, te, seed=0)
    assert choice2 == choice                                      # same model kept, same validation AUROCs
    assert not np.array_equal(p, p2)                              # (the test predictions follow the test rows)
    # the validation rows do decide: validation labels that favour the other candidate flip the choice
    kept = choice["chosen"]
    X3, y3 = X.copy(), y.copy()
    models = {"lr": counts_lr(seed=0).fit(sp.csr_matrix(X)[tr], y[tr]), "gbm": counts_gbm(0).fit(X[tr], y[tr])}
    other = "lr" if kept == "gbm" else "gbm"
    score = models[other].predict_proba(sp.csr_matrix(X)[va] if other == "lr" else X[va])[:, 1]
    y3[va] = (score > np.median(score)).astype(int)               # the other model now ranks validation perfectly
    assert fit_better(sp.csr_matrix(X3), X3, y3, tr, va, te, seed=0)[1]["chosen"] == other


def test_a_validation_set_with_one_class_keeps_lr_and_says_why():
    X, y = _ring()
    tr, va, te = _rows(len(y))
    va = va[y[va] == 0]
    p, choice = fit_better(sp.csr_matrix(X), X, y, tr, va, te, seed=0)
    assert choice["chosen"] == "lr" and choice["validation_auroc"] is None and "one of the two classes" in choice["why"]
    assert comparison.choice_text(choice).startswith("LR kept (the validation rows lack one of the two classes")
    p, choice = fit_better(sp.csr_matrix(X), X, y, tr, va[:0], te, seed=0)
    assert choice["chosen"] == "lr"


# -- in the comparison ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gi_bleed(eunomia_db, tiny_model, tmp_path_factory):
    """The GI-bleed task's first 600 rows, prepared without a text model (the tests bring their own vectors)."""
    from cdm_fixtures import copy_with_nsaid_cohort

    from omop_behrt.tasks.labels import Task, plp_task, split_persons
    cdm = copy_with_nsaid_cohort(eunomia_db, tmp_path_factory.mktemp("choice"))
    t = plp_task(cdm, 1, outcome_concepts=[192671], results_schema="results")
    prep = comparison.prepare(tiny_model, cdm, Task(t.labels.slice(0, 600), t.definition, t.attrition))
    return prep, split_persons(prep.task.labels["subject_id"].to_numpy(), seed=0)


def _with_text(prep, vectors: np.ndarray):
    """``prep`` with these vectors as its text vectors (the shape embed_text_cohort returns)."""
    from omop_behrt.vectors.embed import EmbeddingResult
    index = prep.task.labels.select(["subject_id", "index_date"])
    prov = {"text_model": {"name": "planted", "dims": vectors.shape[1]}, "seconds": 0.1, "rows": len(vectors)}
    return replace(prep, text=EmbeddingResult(index, vectors.astype(np.float32), np.ones(len(vectors), bool), prov))


def _ring_text(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Text vectors whose first column holds the outcome as a ring (|x| > 0.7): only a tree reads it."""
    rng = np.random.default_rng(seed)
    T = rng.uniform(-1, 1, size=(len(y), 8))
    sign = rng.choice([-1.0, 1.0], size=len(y))
    T[:, 0] = np.where(y == 1, sign * rng.uniform(0.75, 1, len(y)), rng.uniform(-0.65, 0.65, len(y)))
    return T


def test_text_counts_keeps_gbm_chosen_on_validation_and_records_it(gi_bleed):
    prep, split = gi_bleed
    y = prep.task.y
    te = np.flatnonzero(split == "test")
    kw = dict(methods=["counts-lr", "text-counts", "embeddings-counts"], few_shot_fractions=None, n_boot=20,
              progress=False)
    res = comparison.run(_with_text(prep, _ring_text(y)), split, **kw)
    c = res["methods"]["text-counts"]["classifier"]
    assert c["chosen"] == "gbm" and c["validation_auroc"]["gbm"] > 0.9 > c["validation_auroc"]["lr"]
    assert res["methods"]["text-counts"]["auroc"] > 0.9 > res["methods"]["counts-lr"]["auroc"]
    assert "classifier" not in res["methods"]["counts-lr"]                  # only the LR-or-GBM methods choose
    assert res["methods"]["embeddings-counts"]["classifier"]["chosen"] in ("lr", "gbm")
    # the GBM's width: the 8 text columns and the counts' densest (at most 500) columns, as counts-gbm reads them
    assert res["features"]["by_method"]["text-counts"] == 8 + min(500, res["features"]["counts"])
    # other text vectors on the test rows: the same choice, other test predictions
    T = _ring_text(y)
    T[te] = np.random.default_rng(5).normal(size=(len(te), T.shape[1]))
    res2 = comparison.run(_with_text(prep, T), split, **kw)
    assert res2["methods"]["text-counts"]["classifier"] == c
    assert res2["test_predictions"]["text-counts"] != res["test_predictions"]["text-counts"]
    assert res2["methods"]["text-counts"]["auroc"] < 0.75                    # the ring is gone from the test rows
    # noise text vectors: the counts carry the signal, and the choice still names the kept model and both scores
    noise = np.random.default_rng(0).normal(size=(len(y), 8))
    res3 = comparison.run(_with_text(prep, noise), split, **{**kw, "methods": ["text-counts"]})
    c3 = res3["methods"]["text-counts"]["classifier"]
    assert set(c3["validation_auroc"]) == {"lr", "gbm"}
    assert c3["chosen"] == max(c3["validation_auroc"], key=lambda k: (c3["validation_auroc"][k], k == "lr"))


def test_the_choice_is_in_the_shareable_results(gi_bleed):
    from omop_behrt.evaluation.metrics import shareable_results
    prep, split = gi_bleed
    res = comparison.run(_with_text(prep, _ring_text(prep.task.y)), split, methods=["text-counts"],
                         few_shot_fractions=None, n_boot=10, progress=False)
    shown = shareable_results(res)
    assert shown["methods"]["text-counts"]["classifier"] == res["methods"]["text-counts"]["classifier"]
    assert "test_predictions" not in shown

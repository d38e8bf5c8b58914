"""Metrics against scikit-learn on known inputs, calibration on simulated risks, BEHRT's per-patient averaging."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from omop_behrt.evaluate import binary_metrics, calibration, few_shot, multilabel_metrics, subsample


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1)
    m = binary_metrics(y, p, n_boot=300, seed=1)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    for k in ("auroc", "auprc", "brier"):
        lo, hi = m[f"{k}_ci"]
        assert lo < m[k] < hi and hi - lo < 0.2
    assert m["n"] == 400 and m["positives"] == int(y.sum())
    assert set(m["curves"]) == {"roc", "pr", "calibration"} and len(m["curves"]["calibration"]["predicted"]) == 10
    assert binary_metrics(y, p, n_boot=300, seed=1) == m                     # same seed, same CIs
    # a hand-checkable AUROC: 3 of the 4 (positive, negative) pairs ordered right
    assert binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], n_boot=0, curves=False)["auroc"] == 0.75
    with pytest.raises(ValueError, match="both classes"):
        binary_metrics([1, 1], [0.2, 0.3])


def test_calibration_slope_and_intercept():
    rng = np.random.default_rng(0)
    lp = rng.normal(-1, 1.5, 200_000)
    p = 1 / (1 + np.exp(-lp))
    y = (rng.random(len(p)) < p).astype(int)
    intercept, slope = calibration(y, p)
    assert intercept == pytest.approx(0, abs=0.03) and slope == pytest.approx(1, abs=0.03)
    over = 1 / (1 + np.exp(-2 * lp))                       # too extreme: slope 1/2
    assert calibration(y, over)[1] == pytest.approx(0.5, abs=0.02)
    high = 1 / (1 + np.exp(-(lp + 1)))                     # risks too high: intercept about -1
    assert calibration(y, high)[0] == pytest.approx(-1, abs=0.05)


def test_behrt_per_patient_averaging_by_hand():
    Y = np.array([[1, 0, 0, 1],      # ranked 0.9 (pos), 0.8 (neg), 0.3 (pos), 0.1 (neg)
                  [0, 0, 0, 0],      # no positive: not in APS or AUROC
                  [1, 1, 1, 1],      # all positive: APS 1, not in AUROC
                  [0, 1, 0, 0]])     # APS 1 (top ranked), AUROC 1
    P = np.array([[0.9, 0.8, 0.1, 0.3],
                  [0.5, 0.5, 0.5, 0.5],
                  [0.2, 0.4, 0.6, 0.8],
                  [0.1, 0.9, 0.2, 0.3]])
    m = multilabel_metrics(Y, P, ["A", "B", "C", "D"])
    aps0 = (1 + 2 / 3) / 2                  # precision at each positive: 1/1, 2/3
    auc0 = 3 / 4                            # pairs (pos, neg): (.9>.8), (.9>.1), (.3<.8), (.3>.1)
    assert m["aps_patients"] == 3 and m["auroc_patients"] == 2
    assert m["aps"] == pytest.approx((aps0 + 1 + 1) / 3)
    assert m["auroc"] == pytest.approx((auc0 + 1) / 2)
    assert m["per_disease"]["A"]["auroc"] == pytest.approx(roc_auc_score(Y[:, 0], P[:, 0]))
    assert set(m["per_disease"]) == {"A", "B", "C", "D"}


def test_subsample_nested_stratified_and_few_shot():
    y = np.r_[np.ones(50, int), np.zeros(950, int)]
    small, big = subsample(y, 0.01, seed=0), subsample(y, 0.1, seed=0)
    assert set(small) <= set(big) and y[small].sum() == 1 and len(small) == 1 + 10 and y[big].sum() == 5
    calls = []
    rng = np.random.default_rng(0)
    y_test = rng.integers(0, 2, 100)

    def oracle(rows):
        calls.append(len(rows))
        return y_test * 0.5 + rng.random(100) * 0.1

    rows = few_shot({"oracle": oracle}, y, y_test, fractions=(0.01, 1.0), n_boot=20)
    assert [r["fraction"] for r in rows] == [0.01, 1.0] and calls == [11, 1000]
    assert rows[0]["auroc"] == 1.0 and rows[1]["train_positives"] == 50

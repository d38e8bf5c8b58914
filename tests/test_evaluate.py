"""Metrics against scikit-learn, the vectorised bootstrap against its loop, calibration, BEHRT's per-patient
averaging; the comparison's method names, what runs, progress on stderr and parallel fits = serial."""
from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from omop_behrt.evaluation.metrics import binary_metrics, calibration, few_shot, multilabel_metrics, subsample


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


def test_vectorised_bootstrap_is_the_per_replicate_loop():
    from omop_behrt.evaluation.metrics import _point, bootstrap_points
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.15).astype(int)
    p = np.round(np.clip(0.2 * y + rng.random(300) * 0.5, 0, 1), 2)          # many tied scores
    draws = np.random.default_rng(7)
    loop = []
    for _ in range(200):
        i = draws.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            loop.append(_point(y[i], p[i]))
    fast = bootstrap_points(y, p, 200, seed=7, chunk_cells=10_000)             # several chunks
    assert len(fast["auroc"]) == len(loop)
    for k in loop[0]:
        assert np.allclose(fast[k], [b[k] for b in loop], rtol=0, atol=1e-9), k


# -- the comparison: method names, only what was asked, progress, parallel fits --------------------------------


@pytest.fixture(scope="module")
def prepared(tiny_model, eunomia_db, tmp_path_factory):
    from cdm_fixtures import copy_with_nsaid_cohort
    from omop_behrt.evaluation import comparison
    from omop_behrt.tasks.labels import Task, plp_task
    cdm = copy_with_nsaid_cohort(eunomia_db, tmp_path_factory.mktemp("evaluate"))
    t = plp_task(cdm, 1, outcome_concepts=[192671], results_schema="results")
    return comparison.prepare(tiny_model, cdm, Task(t.labels.slice(0, 600), t.definition, t.attrition))


@pytest.fixture(scope="module")
def split(prepared):
    from omop_behrt.tasks.labels import split_persons
    return split_persons(prepared.task.labels["subject_id"].to_numpy(), seed=0)


def test_method_names_are_typeable_and_checked():
    from omop_behrt.evaluation.comparison import ALL_METHODS, FEW_SHOT_METHODS, METHODS, TEXT_METHODS, check_methods
    assert METHODS == ("embeddings-lr", "counts-lr", "counts-gbm", "embeddings-counts", "finetuned-pretrained",
                       "finetuned-scratch")
    assert TEXT_METHODS == ("text-lr", "text-counts", "text-behrt") and ALL_METHODS == METHODS + TEXT_METHODS
    assert set(FEW_SHOT_METHODS) <= set(ALL_METHODS)
    assert all(" " not in m and "(" not in m and "+" not in m for m in ALL_METHODS)
    assert check_methods("counts-lr,text-lr", ALL_METHODS) == ["counts-lr", "text-lr"]
    with pytest.raises(ValueError, match="unknown method text-lr"):          # a study's names: no text methods
        check_methods("text-lr")
    assert check_methods(" counts-lr,embeddings-lr,counts-lr ") == ["counts-lr", "embeddings-lr"]
    with pytest.raises(ValueError, match=r"unknown methods counts\+LR, gbm; valid names: embeddings-lr, counts-lr, "
                                         r"counts-gbm, embeddings-counts, finetuned-pretrained, finetuned-scratch"):
        check_methods("counts+LR,gbm")
    with pytest.raises(ValueError, match="no method given"):
        check_methods(",")


def test_cli_unknown_method_is_one_error_listing_the_names(prepared, tiny_model, tmp_path, capsys):
    from omop_behrt.cli.main import main
    prepared.task.save(tmp_path / "task")
    rc = main(["evaluate", "--model", str(tiny_model), "--source", str(tmp_path), "--task", str(tmp_path / "task"),
               "--methods", "counts+LR"])
    err = capsys.readouterr().err
    assert rc != 0 and "unknown method counts+LR; valid names: embeddings-lr, counts-lr" in err
    assert "finetuned-scratch, text-lr, text-counts, text-behrt" in err
    assert "Traceback" not in err


def test_only_the_requested_methods_run(prepared, split, monkeypatch):
    from omop_behrt.evaluation import comparison
    from omop_behrt.vectors import embed
    from omop_behrt.evaluation.heads import FineTunedBehrt

    def no(*a, **k):
        raise AssertionError("a torch model was fitted or run for counts-lr")
    monkeypatch.setattr(FineTunedBehrt, "fit", no)
    monkeypatch.setattr(embed, "embed_sequences", no)
    res = comparison.run(prepared, split, methods=["counts-lr"], few_shot_fractions=(0.25, 1.0), n_boot=20,
                         progress=False)
    assert list(res["methods"]) == ["counts-lr"] and {r["method"] for r in res["few_shot"]} == {"counts-lr"}
    assert [r["fraction"] for r in res["few_shot"]] == [0.25, 1.0] and "embedding" not in res["features"]
    # the 100% few-shot point is the main fit itself
    assert res["few_shot"][1]["auroc"] == pytest.approx(res["methods"]["counts-lr"]["auroc"])


def test_progress_goes_to_stderr_results_to_stdout(prepared, split, capfd):
    from omop_behrt.evaluation import comparison
    comparison.run(prepared, split, methods=["embeddings-lr", "finetuned-pretrained"], few_shot_fractions=(0.25,),
                   finetune={"epochs": 1, "min_steps": 2}, n_boot=20, progress=True)
    out, err = capfd.readouterr()
    assert "embeddings-lr" in out and "AUROC" in out and "finetuned-pretrained" in out
    assert "fits" in err and "few-shot" in err and "fine-tune" in err and "val_loss" in err   # early stopping
    assert "it/s" not in out and "fine-tune" not in out
    comparison.run(prepared, split, methods=["embeddings-lr"], few_shot_fractions=None, n_boot=20, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and "fits" not in err


def test_parallel_fine_tunes_give_the_serial_numbers(prepared, split, capfd):
    import torch

    from omop_behrt.evaluation import comparison
    kw = dict(methods=["counts-lr", "finetuned-pretrained", "finetuned-scratch"], few_shot_fractions=(0.1, 1.0),
              finetune={"epochs": 2, "min_steps": 4}, n_boot=20, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))      # as each of the 2 workers
    try:
        serial = comparison.run(prepared, split, progress=False, n_jobs=1, **kw)
    finally:
        torch.set_num_threads(threads)
    parallel = comparison.run(prepared, split, progress=True, n_jobs=2, **kw)
    assert "fine-tune" in capfd.readouterr().err                 # the workers' epochs, relayed
    assert parallel["test_predictions"] == serial["test_predictions"]
    assert parallel["few_shot"] == serial["few_shot"] and parallel["methods"] == serial["methods"]

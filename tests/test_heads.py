"""Heads: linear probe, Med-BERT-style fine-tuning (pretrained / scratch, FFN / GRU), BEHRT multi-label head."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sklearn.base import clone

from omop_behrt.evaluation.heads import FineTunedBehrt, LinearProbe, MultiLabelBehrt
from omop_behrt.behrt.model import Behrt
from omop_behrt.behrt.tokenizer import tokenize


@pytest.fixture(scope="module")
def seqs_y(tiny_model, eunomia_events):
    from omop_behrt.vocab.mapping import map_events
    persons = eunomia_events.persons()
    keep = persons["subject_id"].to_numpy()[:160]
    tokens = map_events(eunomia_events, "source", progress=False).tokens
    tokens = tokens.filter(pc.is_in(tokens["subject_id"], pa.array(keep)))
    model = Behrt.load(tiny_model)
    seqs = tokenize(tokens, persons, model.vocab, max_len=model.config.max_len)
    sex = dict(zip(persons["subject_id"].to_pylist(), persons["sex"].to_pylist()))
    y = np.array([sex[int(s)] == "F" for s in seqs.subject_id], dtype=int)
    return seqs, y


def test_linear_probe_is_a_sklearn_classifier():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8)).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int)
    p = LinearProbe().fit(X, y).predict_proba(X)
    assert p.shape == (200, 2) and np.allclose(p.sum(1), 1) and ((p[:, 1] > 0.5) == y).mean() > 0.85
    assert clone(LinearProbe()).get_params()["estimator"] is None


def test_finetune_fit_predict_save_load(seqs_y, tiny_model, tmp_path):
    seqs, y = seqs_y
    tr, te = np.arange(100), np.arange(100, len(seqs))
    head = "ffn"
    est = FineTunedBehrt(tiny_model, head=head, epochs=2, patience=1, min_steps=1, seed=0)
    est.fit(seqs.select(tr), y[tr])
    p = est.predict_proba(seqs.select(te))
    assert p.shape == (len(te), 2) and np.allclose(p.sum(1), 1) and est.history_
    again = FineTunedBehrt(tiny_model, head=head, epochs=2, patience=1, min_steps=1, seed=0).fit(seqs.select(tr), y[tr])
    np.testing.assert_array_equal(again.predict_proba(seqs.select(te)), p)          # same seed, same result on CPU
    back = FineTunedBehrt.load(est.save(tmp_path / "head"))
    assert sorted(f.name for f in (tmp_path / "head").iterdir()) == ["config.json", "head.json", "model.safetensors",
                                                                     "tokens.json"]
    np.testing.assert_allclose(back.predict_proba(seqs.select(te)), p, rtol=1e-5, atol=1e-6)


def test_gru_head_over_token_outputs(seqs_y, tiny_model):
    seqs, y = seqs_y
    sub = seqs.select(np.arange(60))
    est = FineTunedBehrt(tiny_model, head="gru", epochs=1, min_steps=1, seed=0).fit(sub, y[:60], eval_set=(sub, y[:60]))
    p = est.predict_proba(sub)
    assert p.shape == (60, 2) and est.model_.gru.bidirectional


def test_scratch_uses_the_same_architecture_but_not_the_weights(seqs_y, tiny_model):
    seqs, y = seqs_y
    seqs, y = seqs.select(np.arange(60)), y[:60]
    pre = FineTunedBehrt(tiny_model, epochs=1, min_steps=1, seed=0).fit(seqs, y, eval_set=(seqs, y))
    scr = FineTunedBehrt(tiny_model, pretrained=False, epochs=1, min_steps=1, seed=0).fit(seqs, y, eval_set=(seqs, y))
    a, b = pre.model_.state_dict(), scr.model_.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not np.allclose(a["encoder.embeddings.code.weight"], b["encoder.embeddings.code.weight"])
    with pytest.raises(ValueError, match="0/1"):
        FineTunedBehrt(tiny_model, epochs=1, min_steps=1).fit(seqs, np.full(len(seqs), 2))


def test_multilabel_head(seqs_y, tiny_model, tmp_path):
    seqs, y = seqs_y
    Y = np.column_stack([y, 1 - y, np.arange(len(y)) % 3 == 0]).astype(int)
    seqs, Y = seqs.select(np.arange(60)), Y[:60]
    est = MultiLabelBehrt(tiny_model, epochs=1, min_steps=1).fit(seqs, Y)
    P = est.predict_proba(seqs)
    assert P.shape == Y.shape and ((P > 0) & (P < 1)).all() and est.model_.kind == "linear"
    assert isinstance(MultiLabelBehrt.load(est.save(tmp_path / "ml")), MultiLabelBehrt)
    with pytest.raises(ValueError, match="2-D"):
        MultiLabelBehrt(tiny_model, epochs=1, min_steps=1).fit(seqs, y[:60])


def test_behrt_t1_multilabel_end_to_end(tiny_model, eunomia_events, tmp_path):
    from omop_behrt.evaluation import comparison
    from omop_behrt.tasks.labels import MultiLabelTask, behrt_task, split_persons
    from omop_behrt.vocab.mapping import map_events
    tokens = map_events(eunomia_events, "caliber", progress=False).tokens
    t = behrt_task(tokens, "T1", seed=0)
    t = MultiLabelTask(t.index.slice(0, 300), t.Y[:300], t.diseases, t.definition)
    back = MultiLabelTask.load(t.save(tmp_path / "t1"))
    assert (back.Y == t.Y).all() and back.diseases == t.diseases and len(t.diseases) > 10
    prep = comparison.prepare(tiny_model, eunomia_events, t)
    res = comparison.run_behrt(prep, split_persons(t.index["subject_id"].to_numpy()),
                               finetune={"epochs": 1, "min_steps": 2}, progress=False)
    for name in ("prevalence", "multilabel-pretrained", "multilabel-scratch"):
        m = res["methods"][name]
        assert 0 <= m["aps"] <= 1 and m["aps_patients"] > 0 and m["per_disease"]


def test_cli_task_behrt(eunomia_events, tmp_path, capsys):
    from omop_behrt.cli.main import main
    from omop_behrt.tasks.labels import MultiLabelTask, load_split
    rc = main(["task", "behrt", "--events", str(eunomia_events.path), "--task", "T2", "--first-incidence",
               "--out", str(tmp_path / "t2")])
    assert rc == 0 and "T2:" in capsys.readouterr().out
    t = MultiLabelTask.load(tmp_path / "t2")
    assert t.definition["first_incidence"] and t.Y.shape == (t.index.num_rows, len(t.diseases))
    assert set(load_split(tmp_path / "t2" / "split.parquet", t.index["subject_id"].to_numpy())) == {"train", "val",
                                                                                                    "test"}


def test_risks_are_calibrated_on_validation(seqs_y, tiny_model, tmp_path):
    """Class weighting (balanced) shifts the logits by log(pos_weight): raw risks far above the outcome rate, the
    Brier-worse-than-prevalence of the issue. Platt scaling on the validation rows brings the mean risk there to
    the validation outcome rate; training itself is unchanged (same weights with calibrate=False), and the
    calibration survives save/load."""
    seqs, y_sex = seqs_y
    y = y_sex * (np.arange(len(y_sex)) % 3 == 0)                  # a rarer outcome (~1 in 6)
    tr, va = np.arange(110), np.arange(110, len(seqs))
    kw = dict(epochs=3, patience=2, min_steps=1, seed=0)
    est = FineTunedBehrt(tiny_model, **kw).fit(seqs.select(tr), y[tr], eval_set=(seqs.select(va), y[va]))
    raw = FineTunedBehrt(tiny_model, calibrate=False, **kw).fit(seqs.select(tr), y[tr],
                                                                 eval_set=(seqs.select(va), y[va]))
    p, q = est.predict_proba(seqs.select(va))[:, 1], raw.predict_proba(seqs.select(va))[:, 1]
    assert 0 < y[va].sum() < len(va)
    assert abs(p.mean() - y[va].mean()) < 0.02                    # Platt with an intercept: mean risk = rate
    assert q.mean() > y[va].mean() + 0.1                          # class weighting alone inflates the risks
    assert raw.calibration_["how"] == "none"
    np.testing.assert_allclose(est._logits(seqs.select(va)), raw._logits(seqs.select(va)))   # same training
    back = FineTunedBehrt.load(est.save(tmp_path / "head"))
    np.testing.assert_allclose(back.predict_proba(seqs.select(va)), est.predict_proba(seqs.select(va)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="early_stopping must be one of"):
        FineTunedBehrt(tiny_model, early_stopping="brier").fit(seqs.select(tr), y[tr])


def test_platt_scaling_never_flips_the_ranking(seqs_y, tiny_model, monkeypatch):
    """Validation scores that rise with the outcome are rescaled (mean risk = the validation rate, order kept);
    scores that do not (a model that learned nothing, as from-scratch fine-tuning on Eunomia) give everyone the
    validation rate instead of a flipped or stretched ranking (test AUROC 0.41 or slope 275 before)."""
    seqs, y = seqs_y
    est = FineTunedBehrt(tiny_model, epochs=1, min_steps=1, seed=0).fit(seqs.select(np.arange(60)), y[:60])
    rng = np.random.default_rng(0)
    Yv = (rng.random(200) < 0.2).astype(np.float32)[:, None]
    good = (Yv[:, 0] * 1.5 + rng.normal(size=200)).astype(np.float32)[:, None]
    monkeypatch.setattr(est, "_logits", lambda X: good)
    c = est._calibration(np.zeros(200), Yv, np.array([4.0]))
    assert c["a"] > 0 and c["how"] == "Platt scaling on 200 validation rows"
    risk = 1 / (1 + np.exp(-(c["a"] * good[:, 0] + c["b"])))
    assert abs(risk.mean() - Yv.mean()) < 1e-3
    monkeypatch.setattr(est, "_logits", lambda X: -good)
    c = est._calibration(np.zeros(200), Yv, np.array([4.0]))
    assert c["a"] == 0.0 and abs(1 / (1 + np.exp(-c["b"])) - Yv.mean()) < 1e-9 and "no positive association" in c["how"]
    one_class = est._calibration(np.zeros(200), np.zeros((200, 1), np.float32), np.array([4.0]))
    assert one_class == {"a": 1.0, "b": -np.log(4.0), "how": "class-weight shift undone (validation lacks a class)"}

"""What a sequence model must learn: an outcome set by the order and timing of two codes, never by which occur.

Every person has codes A and B once each, after 1..5 background visits drawn independently of the label;
positive = A followed by B within 90 days; negatives = B followed by A within 90 days (order) or A followed by
B 400..700 days later (timing). The pair closes each history and the index date (2018-01-01) lies more than a
year after it, so bag-of-codes counts (both windows) see the same codes in both classes: counts + logistic
regression stay near chance (asserted < 0.65). The pretrained encoder with CEHR-BERT time tokens + logistic
regression on the last visit's vector (``pooling="last_visit"``) must reach AUROC >= 0.9: the last visit's
representation has to know which code came last (visit order) and how long after the visit before (the time
token). Without time tokens only the order half is reachable (a year-age cannot tell 60 days from 400).
A guard on the model's use of time and order against regressions, not a headline figure.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from omop_behrt.events import (EVENTS_SCHEMA, OBSERVATION_PERIODS_SCHEMA, PERSONS_SCHEMA, fill_rebuilt_visits,
                               write_table)

START = np.datetime64("2010-01-01", "D")
INDEX_DATE = dt.date(2018, 1, 1)               # > 365 days after every event: the counts' 1-year window is empty
N_PERSONS, STEPS = 2000, 30


def order_data(n: int = N_PERSONS, seed: int = 0) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """(events, persons, label per subject_id 1..n), vectorised: A/B order and timing decide the label."""
    rng = np.random.default_rng(seed)
    sid = np.arange(1, n + 1, dtype=np.int64)
    y = rng.random(n) < 0.5
    b_first = rng.random(n) < 0.5                    # negatives: B then A within 90 days, else A then B > 1 year
    anchor = rng.integers(365, 4 * 365, n)           # day (from START) of the pair's first code
    gap = np.where(y | b_first, rng.integers(3, 90, n), rng.integers(400, 700, n))
    swap = ~y & b_first
    a_day, b_day = np.where(swap, anchor + gap, anchor), np.where(swap, anchor, anchor + gap)
    n_bg = rng.integers(1, 6, n)                     # background visits before the pair, independent of the label
    bg_sid = np.repeat(sid, n_bg)
    bg_day = rng.integers(0, np.repeat(anchor, n_bg))
    per_visit = rng.integers(1, 4, len(bg_sid))      # 1..3 of 30 background codes a visit
    ev_sid = np.concatenate([sid, sid, np.repeat(bg_sid, per_visit)])
    ev_day = np.concatenate([a_day, b_day, np.repeat(bg_day, per_visit)])
    code = np.concatenate([np.full(n, "SYN/A"), np.full(n, "SYN/B"),
                           np.char.add("SYN/bg", rng.integers(0, 30, int(per_visit.sum())).astype(str))])
    days = (START + ev_day.astype("timedelta64[D]")).astype("datetime64[us]")
    order = np.lexsort((code, days, ev_sid))
    cols = {"subject_id": ev_sid[order], "time": pa.array(days[order], pa.timestamp("us")), "code": code[order],
            "domain": np.full(len(order), "condition")}
    events = pa.table({f.name: cols.get(f.name, pa.nulls(len(order), f.type)) for f in EVENTS_SCHEMA},
                      schema=EVENTS_SCHEMA)
    events = fill_rebuilt_visits(events)             # one visit per (person, day), as the adapters write them
    birth = np.datetime64("1940-01-01", "D") + rng.integers(0, 50 * 365, n).astype("timedelta64[D]")
    persons = pa.table({"subject_id": sid, "birth_date": pa.array(birth, pa.date32()),
                        "sex": np.where(rng.random(n) < 0.5, "F", "M"), "death_date": pa.nulls(n, pa.date32()),
                        "source_id": pa.nulls(n, pa.string())}, schema=PERSONS_SCHEMA)
    return events, persons, y.astype(np.int8)


def write_event_dir(path: Path, events: pa.Table, persons: pa.Table) -> Path:
    """An event directory: events/part-00000.parquet, persons, observation periods, manifest."""
    (path / "events").mkdir(parents=True, exist_ok=True)
    write_table(events, path / "events" / "part-00000.parquet")
    write_table(persons, path / "persons.parquet")
    n = persons.num_rows
    write_table(pa.table({"subject_id": persons["subject_id"], "start_date": pa.array([START.item()] * n, pa.date32()),
                          "end_date": pa.array([INDEX_DATE] * n, pa.date32())}, schema=OBSERVATION_PERIODS_SCHEMA),
                path / "observation_periods.parquet")
    (path / "manifest.json").write_text(json.dumps({"adapter": "synthetic (tests/test_sequence_order.py)"}))
    return path


def index_table(subject_id: np.ndarray) -> pa.Table:
    """One index row per person, on INDEX_DATE (cohorts.INDEX_SCHEMA)."""
    from omop_behrt.tasks.cohorts import INDEX_SCHEMA
    n = len(subject_id)
    return pa.table({"cohort_definition_id": pa.array(np.ones(n, np.int64)), "subject_id": pa.array(subject_id),
                     "index_date": pa.array([INDEX_DATE] * n, pa.date32())}).cast(INDEX_SCHEMA)


def probe_auroc(X, y: np.ndarray, train: np.ndarray) -> float:
    """Scaled features + logistic regression fitted on the ``train`` rows; AUROC on the others."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler
    scale = MaxAbsScaler() if hasattr(X, "tocsr") else StandardScaler()
    lr = make_pipeline(scale, LogisticRegression(C=1.0, max_iter=2000)).fit(X[train], y[train])
    return float(roc_auc_score(y[~train], lr.predict_proba(X[~train])[:, 1]))


@pytest.fixture(scope="module")
def order_dir(tmp_path_factory):
    """The data written once: (event directory, events, labels, train mask, index table)."""
    events, persons, y = order_data()
    path = write_event_dir(tmp_path_factory.mktemp("order") / "events", events, persons)
    sid = persons["subject_id"].to_numpy()
    train = np.random.default_rng(1).random(len(sid)) < 0.5
    return path, events, y, train, index_table(sid)


def test_order_data_is_what_it_says():
    events, persons, y = order_data(200)
    assert persons.num_rows == 200 and 0.35 < y.mean() < 0.65
    t = events.select(["subject_id", "time", "code"]).to_pandas()
    a = t[t.code == "SYN/A"].set_index("subject_id").time
    b = t[t.code == "SYN/B"].set_index("subject_id").time
    assert len(a) == len(b) == 200                               # A and B once in everyone
    days = ((b - a).dt.days).sort_index().to_numpy()
    assert ((days > 0) & (days < 90))[y == 1].all()              # positives: A then B within 90 days
    assert ((days < 0) & (days > -90) | (days >= 400))[y == 0].all()
    assert (days < 0)[y == 0].any() and (days >= 400)[y == 0].any()   # both kinds of negative
    last = t.groupby("subject_id").time.max()
    assert (last < np.datetime64(INDEX_DATE) - np.timedelta64(365, "D")).all()
    assert events["visit_id"].null_count == 0


def test_counts_cannot_separate_order_and_timing(order_dir):
    from omop_behrt.evaluation.baselines import CountFeatures
    path, events, y, train, index = order_dir
    counts = CountFeatures().fit((events, index.filter(pa.array(train))))
    auc = probe_auroc(counts.transform((events, index)), y, train)
    print(f"\ncounts + LR AUROC {auc:.3f} ({len(counts.features_)} features)")
    assert auc < 0.65


def test_encoder_learns_order_and_timing(order_dir, tmp_path):
    """Pretrained encoder + LR: >= 0.9 with time tokens; the order half (> 0.65) even without them."""
    from omop_behrt.vectors.embed import embed_cohort
    from omop_behrt.behrt.model import BehrtConfig
    from omop_behrt.behrt.pretrain import pretrain
    path, _, y, train, index = order_dir
    auc, seconds = {}, {}
    for tokens in (True, False):
        t0 = time.perf_counter()
        out = tmp_path / f"model-{tokens}"
        pretrain(path, "source", out, BehrtConfig.preset("tiny", time_tokens=tokens), max_steps=STEPS,
                 progress=False, device="cpu", seed=0, threads=1)   # 1 thread: 2 shared cores thrash
        vec = embed_cohort(out, path, index, pooling="last_visit", device="cpu", progress=False).vectors
        auc[tokens], seconds[tokens] = probe_auroc(vec, y, train), time.perf_counter() - t0
    print(f"\nencoder + LR AUROC: time tokens {auc[True]:.3f} ({seconds[True]:.1f} s), "
          f"without {auc[False]:.3f} ({seconds[False]:.1f} s); {N_PERSONS} persons, {STEPS} steps, tiny")
    assert auc[True] >= 0.9
    assert auc[False] > 0.65

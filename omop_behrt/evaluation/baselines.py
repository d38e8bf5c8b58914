"""Honest baselines: bag-of-codes counts before the index date + logistic regression / gradient boosting.

Like OHDSI FeatureExtraction's default covariates: binary indicators of each code in time windows ending
before the index date (default: the 365 days before, and any time before), plus sex and age. One DuckDB
join builds the (row, feature) pairs; the matrix is scipy sparse (CSR). Only events strictly before each
row's index date are read, as for the embeddings, so both see the same history.
"""
from __future__ import annotations

from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler

WINDOWS = (365, None)     # days before index; None = any time before


def _pairs(codes: pa.Table, index: pa.Table, windows: Sequence[int | None]) -> pa.Table:
    """(row, feature name) for every code seen in a window before the row's index date (distinct)."""
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.register("e", codes.select(["subject_id", "time", "code"]))
    con.register("ix", pa.table({"row": np.arange(index.num_rows, dtype=np.int64),
                                 "subject_id": index["subject_id"].cast(pa.int64()),
                                 "index_time": index["index_date"].cast(pa.timestamp("us"))}))
    parts = []
    for w in windows:
        tag = "all" if w is None else f"{int(w)}d"
        lower = "" if w is None else f"AND e.time >= ix.index_time - INTERVAL {int(w)} DAY"
        parts.append(f"SELECT DISTINCT ix.row, '{tag}:' || e.code AS feature FROM ix JOIN e USING (subject_id) "
                     f"WHERE e.time < ix.index_time {lower}")
    out = con.sql(" UNION ALL ".join(parts)).to_arrow_table()
    con.close()
    return out


class CountFeatures(TransformerMixin, BaseEstimator):
    """(codes table, index table) -> sparse binary features; the feature list is learnt in ``fit``.

    ``X`` is a pair: ``codes`` (subject_id, time, code: an event directory's events, or a token table with the
    token as code) and the index rows (subject_id, index_date). A feature is kept when at least ``min_rows``
    training rows have it. With ``persons`` (subject_id, birth_date, sex), sex and age / 10 are appended.
    """

    def __init__(self, windows: tuple = WINDOWS, min_rows: int = 5, persons: pa.Table | None = None):
        self.windows = windows
        self.min_rows = min_rows
        self.persons = persons

    def fit(self, X: tuple[pa.Table, pa.Table], y=None) -> "CountFeatures":
        pairs = _pairs(*X, self.windows)
        vc = pc.value_counts(pairs["feature"])        # pairs are distinct, so counts are rows
        keep = pc.greater_equal(vc.field("counts"), self.min_rows)
        self.features_ = sorted(pc.filter(vc.field("values"), keep).to_pylist())
        return self

    def transform(self, X: tuple[pa.Table, pa.Table]) -> sp.csr_matrix:
        codes, index = X
        pairs = _pairs(codes, index, self.windows)
        col = pc.index_in(pairs["feature"], value_set=pa.array(self.features_, pa.string()))
        keep = pc.is_valid(col).to_numpy(zero_copy_only=False)
        rows = pairs["row"].to_numpy()[keep]
        cols = col.to_numpy(zero_copy_only=False)[keep].astype(np.int64)
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(index.num_rows, len(self.features_)))
        if self.persons is None:
            return m
        return sp.hstack([m, sp.csr_matrix(demographics(self.persons, index))], format="csr")

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(self.features_ + (["sex=F", "age/10"] if self.persons is not None else []), dtype=object)


def demographics(persons: pa.Table, index: pa.Table) -> np.ndarray:
    """(n, 2) float32: sex is female, age at the index date in decades (FeatureExtraction's demographics)."""
    con = duckdb.connect()
    con.register("p", persons.select(["subject_id", "birth_date", "sex"]))
    con.register("ix", pa.table({"row": np.arange(index.num_rows), "subject_id": index["subject_id"],
                                 "index_time": index["index_date"].cast(pa.timestamp("us"))}))
    r = con.sql("SELECT ix.row, coalesce(p.sex = 'F', FALSE)::FLOAT AS f, "
                "coalesce(date_diff('day', p.birth_date, ix.index_time::DATE) / 3652.5, 0)::FLOAT AS a "
                "FROM ix LEFT JOIN p USING (subject_id) ORDER BY ix.row").fetchnumpy()
    con.close()
    return np.column_stack([r["f"], r["a"]]).astype(np.float32)


def counts_lr(C: float = 0.1, seed: int = 0):
    """Counts + L2 logistic regression (features scaled to [0, 1]); unweighted, so risks stay calibrated."""
    return make_pipeline(MaxAbsScaler(), LogisticRegression(C=C, max_iter=5000, random_state=seed))


def counts_gbm(seed: int = 0) -> HistGradientBoostingClassifier:
    """Counts + sklearn's histogram gradient boosting (dense input), early stopping on a held-out 10%."""
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
                                          early_stopping=True, validation_fraction=0.15, random_state=seed)


def dense_top(X: sp.csr_matrix, max_features: int = 500, columns: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Dense matrix of the ``max_features`` most frequent columns (GBM needs dense input); returns (X, columns)."""
    if columns is None:
        freq = np.asarray((X != 0).sum(0)).ravel()
        columns = np.sort(np.argsort(-freq, kind="stable")[:max_features])
    return X[:, columns].toarray(), columns

"""Patient vectors as of an index date: leakage, the sklearn contract, the CLI into tables."""
from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset  # noqa: F401  (pa.dataset)
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from omop_behrt.tasks import cohorts
from omop_behrt.cli.main import main
from omop_behrt.vectors.embed import embed_cohort
from omop_behrt.vectors.embedder import PatientEmbedder


@pytest.fixture
def cdm(eunomia_db, tmp_path):
    dst = tmp_path / "eunomia_cohorts.duckdb"
    shutil.copy(eunomia_db, dst)
    cohorts.first_occurrence_cohort(dst, 1, [192671], results_schema="results")   # GI bleed, 479 persons
    return dst


def test_no_leakage_after_index(cdm, tiny_model, eunomia_events):
    ix = cohorts.CohortTable(cdm, "results").read(1)
    before = embed_cohort(tiny_model, cdm, ix, progress=False, device="cpu")
    assert before.vectors.shape == (479, 64) and before.has_history.all()
    # the same vectors from the already-extracted event directory (censoring then in the tokenizer), the CDM
    # lending its concept_ancestor to the fallback as the CDM source did
    same = embed_cohort(tiny_model, eunomia_events, ix, progress=False, device="cpu", vocab_cdm=cdm)
    assert np.array_equal(before.vectors, same.vectors)
    # plant events on and after every index date: nothing may change
    con = duckdb.connect(str(cdm))
    con.register("ix", ix)
    for table, cols in [("condition_occurrence", "CONDITION_OCCURRENCE_ID, PERSON_ID, CONDITION_CONCEPT_ID, "
                         "CONDITION_START_DATE, CONDITION_TYPE_CONCEPT_ID, CONDITION_SOURCE_VALUE"),
                        ("drug_exposure", "DRUG_EXPOSURE_ID, PERSON_ID, DRUG_CONCEPT_ID, DRUG_EXPOSURE_START_DATE, "
                         "DRUG_TYPE_CONCEPT_ID, DRUG_SOURCE_VALUE")]:
        concept = 4112343 if table == "condition_occurrence" else 1118084
        con.execute(f"""INSERT INTO {table} ({cols})
            SELECT 80000000 + row_number() OVER (), subject_id, {concept}, CAST(index_date AS DATE) + k, 32020, 'x'
            FROM ix CROSS JOIN (VALUES (0), (3), (365)) v(k)""")
    con.close()
    after = embed_cohort(tiny_model, cdm, ix, progress=False, device="cpu")
    assert np.array_equal(before.vectors, after.vectors)
    # ... while the inclusive rule does see the same-day events
    incl = embed_cohort(tiny_model, cdm, ix, inclusive=True, progress=False, device="cpu")
    assert not np.allclose(incl.vectors, before.vectors)


def test_pipeline_logistic_regression(cdm, tiny_model, eunomia_events):
    """Embeddings feed a Pipeline + LogisticRegression and cross_val_score; a history-derived label is learnable."""
    cohorts.min_visits_cohort(cdm, 2, 5, visits="days", results_schema="results")
    ix = cohorts.CohortTable(cdm, "results").read(2).to_pandas().sample(600, random_state=0)
    # label: any record of viral sinusitis (SNOMED 444814009) before the index date
    ev = eunomia_events.read_events(["subject_id", "time", "code"])
    sinus = ev.filter(pc.equal(ev["code"], "SNOMED/444814009")).to_pandas()
    first = sinus.groupby("subject_id")["time"].min()
    y = (ix["subject_id"].map(first) < ix["index_date"]).to_numpy()
    assert 0.2 < y.mean() < 0.8
    emb = PatientEmbedder(tiny_model, cdm, pooling="mean", device="cpu")
    pipe = make_pipeline(emb, StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(pipe, ix[["subject_id", "index_date"]], y, cv=3, scoring="roc_auc")
    assert scores.mean() > 0.7, scores
    X = emb.fit(ix).set_output(transform="pandas").transform(ix[["subject_id", "index_date"]])
    assert isinstance(X, pd.DataFrame) and list(X.columns[:2]) == ["emb_0", "emb_1"] and X.shape == (600, 64)
    assert X.dtypes.iloc[0] == np.float32


def test_embedder_contract(tiny_model, eunomia_events):
    e = PatientEmbedder(tiny_model, eunomia_events)
    assert e.get_params()["pooling"] == "cls"
    with pytest.raises(Exception, match="not fitted"):
        e.transform(pd.DataFrame({"subject_id": [1], "index_date": ["2000-01-01"]}))
    assert e.fit() is e
    assert e.get_feature_names_out().tolist()[:3] == ["emb_0", "emb_1", "emb_2"]
    X = pd.DataFrame({"subject_id": [6, 6, 99999999], "index_date": pd.to_datetime(["1900-01-01", "2019-01-01",
                                                                                       "2010-01-01"])})
    out = e.transform(X)
    assert out.shape == (3, 64) and out.dtype == np.float32
    # born 1963: nothing before 1900; unknown subject: nothing at all -> listed as skipped
    assert e.skipped_.num_rows == 2 and e.provenance_["skipped"] == {"no history before index": 1,
                                                                     "subject not in source": 1}
    # order of rows and batch mates do not change a row's vector
    alone = e.transform(X.iloc[[1]])
    assert np.allclose(alone[0], out[1], atol=1e-5)
    for pooling in ("mean", "last_visit"):
        v = PatientEmbedder(tiny_model, eunomia_events, pooling=pooling).fit().transform(X.iloc[[1]])
        assert not np.allclose(v, alone)
    with pytest.raises(ValueError, match="pooling must be one of"):
        PatientEmbedder(tiny_model, eunomia_events, pooling="max").fit()
    with pytest.raises(ValueError, match="columns subject_id and index_date"):
        e.transform(np.zeros((2, 3)))


# sklearn checks that feed random numeric matrices: ours takes (subject_id, index_date) rows, so they cannot apply
NOT_APPLICABLE = {
    "check_fit_score_takes_y", "check_dont_overwrite_parameters", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_complex_data", "check_dtype_object",
    "check_estimators_empty_data_messages", "check_pipeline_consistency", "check_estimators_nan_inf",
    "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_transformer_data_not_an_array",
    "check_transformer_general", "check_transformer_preserve_dtypes", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_fit2d_1sample", "check_fit2d_1feature", "check_dict_unchanged",
    "check_fit2d_predict1d", "check_n_features_in", "check_fit1d", "check_readonly_memmap_input",
    "check_fit_idempotent", "check_fit_check_is_fitted", "check_estimators_overwrite_params",
    "check_estimators_fit_returns_self", "check_estimator_sparse_tag", "check_estimator_sparse_array",
    "check_estimator_sparse_matrix", "check_transformer_n_iter",
}
MUST_PASS = {"check_estimator_cloneable", "check_estimator_repr", "check_no_attributes_set_in_init",
             "check_estimators_unfitted", "check_transformers_unfitted", "check_get_params_invariance",
             "check_set_params", "check_parameters_default_constructible", "check_mixin_order",
             "check_do_not_raise_errors_in_init_or_set_params", "check_valid_tag_types"}


def test_sklearn_estimator_checks(tiny_model, eunomia_events):
    """sklearn's own checks where they apply; every other failure must be a not-applicable one (listed above)."""
    import warnings
    from sklearn.utils.estimator_checks import check_estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(PatientEmbedder(tiny_model, eunomia_events), on_fail=None)
    status = {}
    for r in results:
        status.setdefault(r["check_name"], set()).add(r["status"])
    passed = {c for c, st in status.items() if st == {"passed"}}
    failed = {c for c, st in status.items() if "failed" in st}
    assert MUST_PASS <= passed, MUST_PASS - passed
    assert failed <= NOT_APPLICABLE, failed - NOT_APPLICABLE


def test_embed_cli_to_tables(cdm, tiny_model, tmp_path, capsys):
    rc = main(["embed", "--model", str(tiny_model), "--source", str(cdm), "--cohort-id", "1",
               "--out", str(tmp_path / "emb.duckdb"), "--ohdsi-analysis-id", "990", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "embedded 479 of 479" in out and "FLOAT[64]" in out
    con = duckdb.connect(str(tmp_path / "emb.duckdb"), read_only=True)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT subject_id) FROM results.patient_embedding").fetchall() == [
        (479, 479)]
    assert con.execute("SELECT COUNT(*) FROM results.cohort_attribute").fetchall()[0][0] == 479 * 64
    prov = con.execute("SELECT provenance FROM results.embedding_run").fetchall()[0][0]
    assert '"censoring": "extraction SQL"' in prov and "results.cohort cohort_definition_id=1" in prov
    con.close()
    # CSV index dates into Parquet; a second run replaces
    pd.DataFrame({"subject_id": [6, 123], "index_date": ["2005-01-01", "1900-01-01"]}).to_csv(
        tmp_path / "ix.csv", index=False)
    for _ in range(2):
        assert main(["embed", "--model", str(tiny_model), "--source", str(cdm), "--cohort", str(tmp_path / "ix.csv"),
                     "--out", str(tmp_path / "p"), "--quiet"]) == 0
    t = pa.parquet.read_table(tmp_path / "p" / "patient_embedding.parquet")
    assert t["subject_id"].to_pylist() == [6]             # 123 has no history before 1900: skipped, not exported
    assert "1 without history before the index date" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="no CUDA GPU: bf16 embedding path not exercised")
def test_cuda_bf16_matches_cpu(tiny_model, eunomia_events):
    """On a GPU (bf16 autocast by default) vectors match the CPU fp32 ones to bf16 precision."""
    X = pd.DataFrame({"subject_id": [6, 123, 129], "index_date": pd.to_datetime(["2019-01-01"] * 3)})
    cpu = PatientEmbedder(tiny_model, eunomia_events, device="cpu").fit().transform(X)
    gpu = PatientEmbedder(tiny_model, eunomia_events, device="cuda").fit().transform(X)
    assert np.allclose(cpu, gpu, atol=3e-2)
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert (cos > 0.999).all()


def test_cohort_visits_are_read_once_sorted_by_person(eunomia_events, tmp_path):
    """The visits a run's chunks read come from one scan: the cohort's visit events (tokenizer.visit_table's rows,
    none of another person's), sorted by person so that a chunk reads only its own row groups."""
    import duckdb
    from omop_behrt.behrt.tokenizer import visit_table, write_visits
    subjects = np.array([6, 123, 5, 10_000_000], np.int64)          # one person without events
    write_visits(duckdb.connect(), eunomia_events, tmp_path / "v.parquet", subjects=subjects)
    got = pa.parquet.read_table(tmp_path / "v.parquet")
    want = visit_table(eunomia_events.events().filter(pa.dataset.field("subject_id").isin(pa.array(subjects))))
    key = [("subject_id", "ascending"), ("time", "ascending"), ("visit_id", "ascending")]
    assert got.num_rows == want.num_rows > 0 and got.equals(want.sort_by(key).cast(got.schema))
    assert (np.diff(got["subject_id"].to_numpy()) >= 0).all() and set(got["subject_id"].to_pylist()) <= {5, 6, 123}
    write_visits(duckdb.connect(), eunomia_events, tmp_path / "none.parquet", subjects=np.zeros(0, np.int64))
    assert pa.parquet.read_table(tmp_path / "none.parquet").num_rows == 0


def test_messy_index_rows_are_named_not_embedded(tiny_model, eunomia_events):
    """An index entry without a date, a person or a cohort is bad input: the error names the row and the column
    (it was embedded as "no history", or failed in Arrow, before). Repeated entries, persons the events do not
    hold, dates before birth or in 9999 are embedded as entries; an empty cohort gives an empty result."""
    import datetime as dt
    p = eunomia_events.persons()["subject_id"].to_pylist()[:3]
    day = dt.date(2010, 1, 1)

    def index(cid, sid, date):
        return pa.table({"cohort_definition_id": pa.array(cid, pa.int64()), "subject_id": pa.array(sid, pa.int64()),
                         "index_date": pa.array(date, pa.date32())})
    for table, message in (
            (index([1, 1], p[:2], [day, None]), "row 2: index_date is null"),
            (index([1, 1, 1], [p[0], None, None], [day] * 3), "row 2: subject_id is null (2 null in all"),
            (index([None, 1], p[:2], [day] * 2), "row 1: cohort_definition_id is null")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            embed_cohort(tiny_model, eunomia_events, table, progress=False, device="cpu")
    with pytest.raises(ValueError, match="column 'subject_id' \\(string\\) cannot be read as int64"):
        embed_cohort(tiny_model, eunomia_events, pa.table({"cohort_definition_id": [1], "subject_id": ["x1"],
                                                           "index_date": [day]}), progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"column\(s\) \['index_date'\] missing"):
        embed_cohort(tiny_model, eunomia_events, pa.table({"cohort_definition_id": [1], "subject_id": [p[0]]}),
                     progress=False, device="cpu")
    odd = index([1] * 5, [p[0], p[0], 123456789, p[1], p[2]],
                [day, day, day, dt.date(1800, 1, 1), dt.date(9999, 12, 31)])
    res = embed_cohort(tiny_model, eunomia_events, odd, progress=False, device="cpu")
    assert res.has_history.tolist() == [True, True, False, False, True]
    assert np.array_equal(res.vectors[0], res.vectors[1])
    assert res.provenance["skipped"] == {"no history before index": 1, "subject not in source": 1}
    empty = embed_cohort(tiny_model, eunomia_events, odd.slice(0, 0), progress=False, device="cpu")
    assert empty.vectors.shape == (0, res.vectors.shape[1]) and empty.index.num_rows == 0

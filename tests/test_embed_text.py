"""`embed --encoder text`: serialised records embedded by a language model, written like BEHRT's vectors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from omop_behrt.tasks import atlas
from omop_behrt.tasks import cohorts
from omop_behrt.cli.main import main

from conftest import DATA

pytest.importorskip("transformers", reason="the text encoder needs transformers (pip install 'omop-behrt[text]')")


@pytest.fixture(scope="module")
def gi_bleed_cdm(eunomia_db, tmp_path_factory):
    db = tmp_path_factory.mktemp("text") / "e.duckdb"
    shutil.copy(eunomia_db, db)
    atlas.from_atlas(DATA / "ohdsi_phenotypes" / "cohorts" / "77.json").generate(db)
    return db


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    from test_text_encoder import _bert_dir
    return _bert_dir(tmp_path_factory.mktemp("tiny_bert"))


def test_embed_text_cli_and_api_agree(gi_bleed_cdm, tiny_text_model, tmp_path, capsys):
    from omop_behrt.vectors.embed_text import embed_text_cohort
    from omop_behrt.text.serialize import SERIALIZER_VERSION, serialize
    from omop_behrt.text.encoder import TextEncoder
    out = tmp_path / "v.parquet"
    assert main(["embed", "--encoder", "text", "--text-model", str(tiny_text_model), "--source", str(gi_bleed_cdm),
                 "--cohort-id", "77", "--out", str(out), "--quiet"]) == 0
    assert "embedded 391 of 391 cohort entries" in capsys.readouterr().out
    written = pq.read_table(out).sort_by([("subject_id", "ascending")])
    encoder = TextEncoder(tiny_text_model)
    assert written.num_rows == 391 and written["embedding"].type.list_size == encoder.dims
    # the same vectors as serialising and encoding by hand
    index = cohorts.CohortTable(gi_bleed_cdm, "results").read(77)
    res = embed_text_cohort(gi_bleed_cdm, index, encoder=encoder, work_dir=tmp_path / "w")
    texts = serialize(gi_bleed_cdm, index, work_dir=tmp_path / "w2").texts
    np.testing.assert_allclose(res.vectors, encoder.encode(texts["text"]), rtol=1e-5, atol=1e-6)
    order = np.argsort(index["subject_id"].to_numpy(), kind="stable")
    np.testing.assert_allclose(np.stack(written["embedding"].to_numpy(zero_copy_only=False)), res.vectors[order],
                               rtol=1e-5, atol=1e-6)
    assert res.provenance["serializer_version"] == SERIALIZER_VERSION and res.provenance["encoder"] == "text"
    assert res.provenance["text_model"]["checksum"] == encoder.checksum()


def test_embed_text_registry_names_encoder(gi_bleed_cdm, tiny_text_model, tmp_path):
    import duckdb
    target = tmp_path / "t.duckdb"
    assert main(["embed", "--encoder", "text", "--text-model", str(tiny_text_model), "--source", str(gi_bleed_cdm),
                 "--cohort-id", "77", "--out", str(target), "--quiet"]) == 0
    con = duckdb.connect(str(target), read_only=True)
    name, config = con.execute("SELECT name, config FROM results.embedding_model").fetchall()[0]
    config = json.loads(config)
    assert name.startswith("text:") and config["encoder"] == "text" and config["serializer_version"] == "2"
    assert len(config["checksum"]) == 64


def test_behrt_encoder_still_needs_a_model(gi_bleed_cdm, tmp_path, capsys):
    out = str(tmp_path / "v.parquet")
    assert main(["embed", "--source", str(gi_bleed_cdm), "--cohort-id", "77", "--out", out]) == 2
    assert "needs --model" in capsys.readouterr().err


def test_patient_embedder_text_in_a_pipeline(gi_bleed_cdm, tiny_text_model):
    """PatientEmbedder(encoder="text") has BEHRT's contract: fit returns self, transform gives (n, dims) float32
    rows in the input's order, usable in a scikit-learn Pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from omop_behrt.vectors.embedder import PatientEmbedder
    index = cohorts.CohortTable(gi_bleed_cdm, "results").read(77).to_pandas().iloc[:40]
    emb = PatientEmbedder(source=gi_bleed_cdm, encoder="text", text_model=str(tiny_text_model))
    X = emb.fit(index).transform(index)
    assert X.shape == (40, emb.n_features_out_) and X.dtype == np.float32
    again = emb.transform(index.iloc[::-1])
    np.testing.assert_allclose(again[::-1], X, rtol=1e-5, atol=1e-6)
    y = np.arange(40) % 2
    pipe = make_pipeline(PatientEmbedder(source=gi_bleed_cdm, encoder="text", text_model=str(tiny_text_model)),
                         LogisticRegression(max_iter=200)).fit(index, y)
    assert pipe.predict_proba(index).shape == (40, 2)
    with pytest.raises(ValueError, match="encoder must be 'behrt' or 'text'"):
        PatientEmbedder(source=gi_bleed_cdm, encoder="gpt").fit()


def test_dump_text_warns_and_writes_only_when_asked(gi_bleed_cdm, tiny_text_model, tmp_path, capsys):
    out = tmp_path / "v.parquet"
    assert main(["embed", "--encoder", "text", "--text-model", str(tiny_text_model), "--source", str(gi_bleed_cdm),
                 "--cohort-id", "77", "--out", str(out), "--quiet", "--dump-text", str(tmp_path / "texts")]) == 0
    assert "holds serialised patient records (patient data)" in capsys.readouterr().err
    texts = pq.read_table(tmp_path / "texts" / "texts.parquet")
    assert texts.num_rows == 391 and all("before" in t for t in texts["text"].to_pylist())
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("texts*")] == ["texts", "texts/texts.parquet"]
    assert main(["embed", "--encoder", "text", "--text-model", str(tiny_text_model), "--source", str(gi_bleed_cdm),
                 "--cohort-id", "77", "--out", str(tmp_path / "w.parquet"), "--quiet"]) == 0
    assert "patient data" not in capsys.readouterr().err
    assert len(list(tmp_path.rglob("texts*"))) == 2        # nothing more written without --dump-text

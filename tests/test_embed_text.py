"""`embed --encoder text`: serialised records embedded by a language model, written like BEHRT's vectors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from omop_behrt import atlas, cohorts
from omop_behrt.cli import main

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
    from omop_behrt.embed import embed_text_cohort
    from omop_behrt.serialize import SERIALIZER_VERSION, serialize
    from omop_behrt.text_encoder import TextEncoder
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
    assert name.startswith("text:") and config["encoder"] == "text" and config["serializer_version"] == "1"
    assert len(config["checksum"]) == 64


def test_behrt_encoder_still_needs_a_model(gi_bleed_cdm, tmp_path, capsys):
    assert main(["embed", "--source", str(gi_bleed_cdm), "--cohort-id", "77", "--out", str(tmp_path / "v.parquet")]) == 2
    assert "needs --model" in capsys.readouterr().err

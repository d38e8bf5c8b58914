"""A tiny end-to-end run (CDM -> task -> every method -> report), no leakage into inputs, the report's sections."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from omop_behrt import cohorts, comparison
from omop_behrt.baselines import CountFeatures
from omop_behrt.cli import main
from omop_behrt.model import Behrt
from omop_behrt.report import SECTIONS, attention_weights, write_report
from omop_behrt.tasks import Task, plp_task, split_persons

NSAIDS = [1118084, 1124300, 1177480, 1115008]


@pytest.fixture(scope="module")
def cdm(eunomia_db, tmp_path_factory):
    dst = tmp_path_factory.mktemp("report") / "eunomia.duckdb"
    shutil.copy(eunomia_db, dst)
    cohorts.first_occurrence_cohort(dst, 1, NSAIDS, domains=["drug"], results_schema="results")
    return dst


@pytest.fixture(scope="module")
def small_task(cdm) -> Task:
    t = plp_task(cdm, 1, outcome_concepts=[192671], results_schema="results")
    return Task(t.labels.slice(0, 700), t.definition, t.attrition)


@pytest.fixture(scope="module")
def prepared(tiny_model, cdm, small_task):
    return comparison.prepare(tiny_model, cdm, small_task)


def test_inputs_stop_before_the_index_date(prepared, small_task):
    ix = dict(zip(small_task.labels["subject_id"].to_pylist(), small_task.labels["index_date"].to_numpy()))
    codes = prepared.codes
    t = codes["time"].to_numpy()
    idx = np.array([ix[s] for s in codes["subject_id"].to_pylist()])
    assert len(t) > 10_000 and (t[~np.isnat(t)] < idx[~np.isnat(t)]).all()      # censored in the extraction SQL
    assert (prepared.seqs.subject_id == small_task.labels["subject_id"].to_numpy()).all()
    # events planted on and after every index date change no count feature
    index = small_task.labels.select(["subject_id", "index_date"])
    later = pa.table({"subject_id": index["subject_id"], "time": index["index_date"],
                      "code": pa.array(["SNOMED/192671"] * index.num_rows)})
    planted = pa.concat_tables([codes, later.cast(codes.schema)])
    cf = CountFeatures().fit((codes, index))
    assert (cf.transform((codes, index)) != cf.transform((planted, index))).nnz == 0
    assert "all:SNOMED/192671" not in cf.fit((planted, index)).features_


def test_attention_weights_reproduce_the_fast_path(tiny_model, prepared):
    from omop_behrt.batches import collate
    model = Behrt.load(tiny_model)
    i = int(np.argmax(prepared.seqs.lengths))
    w = attention_weights(model, prepared.seqs, i, mean=False)
    assert np.allclose(w.sum(-1), 1, atol=1e-5)
    b = collate(prepared.seqs, np.array([i]), {})
    with torch.no_grad():
        x = model.embeddings(b["input_ids"], b["ages"], b["segments"], b["positions"], {})
        for block in model.blocks[:-1]:
            x = block(x, None)
        last = model.blocks[-1]
        B, T, H = x.shape
        q, k, v = last.attn.qkv(last.ln1(x)).view(B, T, 3, last.attn.heads, -1).permute(2, 0, 3, 1, 4)
        fast = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(torch.from_numpy(w)[None] @ v, fast, atol=1e-5)


def test_end_to_end_comparison_and_report(prepared, small_task, tiny_model, cdm, tmp_path):
    split = split_persons(small_task.labels["subject_id"].to_numpy(), seed=0)
    res = comparison.run(prepared, split, methods=["embeddings+LR", "counts+LR", "counts+GBM", "embeddings+counts",
                                                   "fine-tuned (pretrained)"],
                         few_shot_fractions=(0.25, 1.0), few_shot_methods=["embeddings+LR", "counts+LR"],
                         finetune={"epochs": 1, "min_steps": 5}, n_boot=30, progress=False)
    assert set(res["methods"]) == {"embeddings+LR", "counts+LR", "counts+GBM", "embeddings+counts",
                                   "fine-tuned (pretrained)"}
    for m in res["methods"].values():
        assert 0 <= m["auroc"] <= 1 and m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1]
    assert len(res["few_shot"]) == 4 and res["n"]["test"]["rows"] == int((split == "test").sum())
    path = write_report(tmp_path / "r", res, tiny_model, seqs=prepared.seqs, cdm=cdm)
    page = path.read_text()
    for section in SECTIONS:
        assert f"<h2>{section}" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 5 and "http" not in page.split("<body>")[1]
    assert (tmp_path / "r" / "results.json").exists()


def test_cli_task_and_evaluate(cdm, tiny_model, tmp_path, capsys):
    rc = main(["task", "plp", "--source", str(cdm), "--target-cohort-id", "1", "--outcome-concepts", "192671",
               "--out", str(tmp_path / "task")])
    assert rc == 0 and "kept" in capsys.readouterr().out
    t = Task.load(tmp_path / "task")
    Task(t.labels.slice(0, 500), t.definition, t.attrition).save(tmp_path / "task")
    rc = main(["evaluate", "--model", str(tiny_model), "--source", str(cdm), "--task", str(tmp_path / "task"),
               "--methods", "embeddings+LR,counts+LR", "--no-few-shot", "--bootstrap", "20",
               "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 0 and "counts+LR" in out and (tmp_path / "rep" / "report.html").exists()
    rc = main(["finetune", "--model", str(tiny_model), "--source", str(cdm), "--task", str(tmp_path / "task"),
               "--epochs", "1", "--min-steps", "2", "--out", str(tmp_path / "head")])
    assert rc == 0 and "test AUROC" in capsys.readouterr().out and (tmp_path / "head" / "model.safetensors").exists()
    assert main(["evaluate", "--model", str(tiny_model), "--source", str(cdm), "--task", str(tmp_path / "nope")]) == 2
    assert "labels.parquet" in capsys.readouterr().err

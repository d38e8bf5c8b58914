"""The run-time leakage check: a task whose outcome windows hold events the encoder was pretrained on is flagged.

The exact count (pretraining events still here) is checked against an independent pandas computation; a model
pretrained on events censored at the task's index dates gives no warning, by the exact join and by its digest.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from omop_behrt.tasks import cohorts
from omop_behrt.adapters import omop
from omop_behrt.study.demo import GI_BLEED
from omop_behrt.tasks.labels import plp_task, pretraining_overlap
from cdm_fixtures import copy_with_nsaid_cohort


@pytest.fixture(scope="module")
def cdm(eunomia_db, tmp_path_factory):
    """This module's own copy of Eunomia: the cohort written into it must not reach other tests' copies."""
    return copy_with_nsaid_cohort(eunomia_db, tmp_path_factory.mktemp("leakage_cdm"), cohort_id=911)


@pytest.fixture(scope="module")
def nsaid_task(cdm):
    """GI haemorrhage within a year of a first NSAID (cohort 911 in results.cohort)."""
    return plp_task(cdm, cohorts.CohortTable(cdm).read(911), outcome_concepts=[GI_BLEED])


def _metadata(model_dir) -> dict:
    return json.loads((model_dir / "metadata.json").read_text())


@pytest.fixture(scope="module")
def window_entries(eunomia_events, nsaid_task) -> tuple[pd.Series, pd.Series]:
    """Independently, in pandas: task entries with events in days 1-365 after index, and on or after it."""
    ev = eunomia_events.read_events(["subject_id", "time"]).to_pandas()
    ix = nsaid_task.labels.to_pandas()[["subject_id", "index_date"]]
    j = ix.merge(ev, on="subject_id")
    days = (j["time"] - j["index_date"]).dt.total_seconds() / 86400
    return (j[(days >= 1) & (days < 366)].groupby(["subject_id", "index_date"]).size(),
            j[days >= 0].groupby(["subject_id", "index_date"]).size())


def test_uncensored_pretraining_is_flagged_with_the_exact_count(tiny_model, nsaid_task, window_entries):
    meta = _metadata(tiny_model)
    assert meta["training_data"]["censored_at"] is None
    warning = pretraining_overlap(meta, nsaid_task)
    inside, later = window_entries
    assert len(inside) > 100                                 # Eunomia's records run on for years after the index
    assert warning.startswith("leakage:")
    n = nsaid_task.labels.num_rows
    assert f"window (days 1-365 after index) of {len(inside):,} of {n:,} task entries" in warning
    assert f"({len(later):,} have pretraining events" in warning
    assert "--index-dates" in warning


def test_censored_pretraining_is_not_flagged(cdm, nsaid_task, tmp_path):
    from omop_behrt.behrt.pretrain import pretrain
    opts = omop.ExtractOptions(index_dates=nsaid_task.labels.select(["subject_id", "index_date"]))
    omop.extract(cdm, tmp_path / "events", options=opts, progress=False)
    pretrain(tmp_path / "events", "source", tmp_path / "model", "tiny", max_steps=2, progress=False,
             device="cpu", seed=0)
    meta = _metadata(tmp_path / "model")
    assert meta["training_data"]["censored_at"].startswith(f"{np.unique(nsaid_task.labels['subject_id']).size} "
                                                           f"subjects, sha256 ")
    assert pretraining_overlap(meta, nsaid_task) is None             # exact: the events are here
    shutil.rmtree(tmp_path / "events")
    assert pretraining_overlap(meta, nsaid_task) is None             # by the censoring digest


def test_without_the_pretraining_events_the_years_decide(tiny_model, nsaid_task):
    meta = _metadata(tiny_model)
    meta["training_data"]["events_dir"] = "/nonexistent/events"
    warning = pretraining_overlap(meta, nsaid_task)
    assert warning.startswith("possible leakage: the model's pretraining data runs to "
                              f"{meta['training_data']['last_year']}")
    first = pd.Timestamp(nsaid_task.labels["index_date"].to_numpy().min()).year
    assert f"(the first is in {first})" in warning
    meta["training_data"]["last_year"] = first - 1                   # data that ended before any index date
    assert pretraining_overlap(meta, nsaid_task) is None


def test_small_counts_are_hidden(tiny_model, nsaid_task, window_entries):
    import pyarrow as pa
    subjects = window_entries[0].index.get_level_values("subject_id")[:5]
    rows = np.flatnonzero(np.isin(nsaid_task.labels["subject_id"].to_numpy(), subjects))
    small = type(nsaid_task)(nsaid_task.labels.take(pa.array(rows)), nsaid_task.definition, nsaid_task.attrition)
    warning = pretraining_overlap(_metadata(tiny_model), small)
    assert "outcome window (days 1-365 after index) of <10 of <10 task entries (<10 have" in warning


def test_evaluate_says_it_on_the_command_line_and_in_the_results(tiny_model, cdm, nsaid_task, tmp_path, capsys):
    from omop_behrt.cli.main import main
    from omop_behrt.tasks.labels import save_split, split_persons
    subjects = nsaid_task.labels["subject_id"].to_numpy()
    nsaid_task.save(tmp_path / "task")
    save_split(tmp_path / "task" / "split.parquet", subjects, split_persons(subjects, seed=0))
    rc = main(["evaluate", "--model", str(tiny_model), "--source", str(cdm), "--task", str(tmp_path / "task"),
               "--methods", "counts-lr", "--no-few-shot", "--bootstrap", "10", "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "omop-behrt: warning: leakage: the model was pretrained on events inside the outcome window" in err
    assert "Traceback" not in err and "LeakageWarning" not in err
    assert json.loads((tmp_path / "r.json").read_text())["leakage"].startswith("leakage:")


def test_the_report_puts_it_in_the_warning_box():
    from omop_behrt.evaluation.report import result_warnings
    assert result_warnings({"methods": {}}) == []
    w = result_warnings({"methods": {}, "leakage": "leakage: the model was pretrained on events inside ..."})
    assert w == [{"method": "encoder-based methods", "metric": "leakage", "value": "",
                  "why": "leakage: the model was pretrained on events inside ..."}]

"""The HTML report with the text methods: a "Text encoder" section of aggregates (model, window, checksum,
serialiser, grouping, description coverage, truncation, time) taken from the text run's provenance, readable
method cells that say which of LR/GBM was kept, small counts suppressed, no serialised text, shareable."""
from __future__ import annotations

import copy
import html
import json
import re

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the text encoder's extra (omop-behrt[text]) is not installed")

from test_text_encoder import _bert_dir  # after the importorskip: it needs transformers

from omop_behrt.evaluation import comparison
from omop_behrt.evaluation.metrics import shareable_results
from omop_behrt.evaluation.report import SECTIONS, write_report
from omop_behrt.evaluation.report_text import METHOD_WORDS, ORIGIN_WORDS, TEXT_SECTION, text_rows
from omop_behrt.shareable import check_shareable

METHODS = ["counts-lr", "embeddings-lr", "text-lr", "text-counts", "text-behrt"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return _bert_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def run(eunomia_db, tiny_model, bert, tmp_path_factory):
    """The GI-bleed task (first 500 rows) with the tiny BERT's text vectors, the text methods, and the report."""
    from cdm_fixtures import copy_with_nsaid_cohort

    from omop_behrt.tasks.labels import Task, plp_task, split_persons
    cdm = copy_with_nsaid_cohort(eunomia_db, tmp_path_factory.mktemp("report_text"))
    t = plp_task(cdm, 1, outcome_concepts=[192671], results_schema="results")
    task = Task(t.labels.slice(0, 500), t.definition, t.attrition)
    prep = comparison.prepare(tiny_model, cdm, task, text_model=bert)
    split = split_persons(task.labels["subject_id"].to_numpy(), seed=0)
    results = comparison.run(prep, split, methods=METHODS, few_shot_fractions=(0.5, 1.0), n_boot=20,
                             progress=False)
    page = write_report(tmp_path_factory.mktemp("report") / "r", results, tiny_model, prep=prep, cdm=cdm)
    return cdm, task, prep, results, page


def _cell(page: str, label: str) -> str:
    """The second cell of the table row whose first cell is ``label`` (unescaped)."""
    m = re.search(rf"<tr><td>{re.escape(html.escape(label))}</td><td>(.*?)</td></tr>", page)
    assert m, f"no row {label!r}"
    return html.unescape(m.group(1))


def test_text_encoder_section_reports_the_text_runs_provenance(run, bert):
    _, _, prep, results, report = run
    page = report.read_text()
    p = prep.text.provenance
    tm = p["text_model"]
    # the section sits between the baseline characteristics and the metrics, with its own how-to-read
    assert page.index("<h2>Baseline characteristics") < page.index(f"<h2>{TEXT_SECTION}") < page.index("<h2>Metrics")
    assert page.count("How to read this") == len(SECTIONS) + 1
    assert _cell(page, "text model") == f"{bert.name} ({tm['kind']}, {tm['pooling']} pooling)"
    assert _cell(page, "vector size") == "16" == str(tm["dims"])
    assert _cell(page, "window").startswith(f"{tm['max_tokens']} tokens;")
    assert _cell(page, "model checksum (sha256)") == tm["checksum"][:12] + "…" and len(tm["checksum"]) == 64
    assert _cell(page, "serialiser version") == p["serializer_version"]
    assert _cell(page, "grouping").startswith("by domain") and p["group"] == "domain"
    assert _cell(page, "what the text holds") == "events strictly before the index date"
    cov = p["description_coverage"]
    assert _cell(page, "events with a description") == f"{cov['event_share'] * 100:.1f}%"
    assert _cell(page, "codes with a description") == f"{cov['code_share'] * 100:.1f}%"
    # by origin: the shares of events each source of descriptions covers (Eunomia: concept_name at extraction)
    assert cov["events_by_origin"]
    for origin, n in cov["events_by_origin"].items():
        label = ORIGIN_WORDS[origin]
        assert _cell(page, f"… described by {label}") == f"{n / cov['events'] * 100:.1f}% of events"
    assert sum(cov["events_by_origin"].values()) == cov["events_described"]
    seconds = float(_cell(page, "time to serialise and embed").split(" s on ")[0].replace(",", ""))
    assert seconds == pytest.approx(p["seconds"], abs=0.05) and seconds > 0
    no_hist = p["skipped"]["no history before index"]
    shown = _cell(page, "records with no history before the index date")
    assert shown == ("none" if no_hist == 0 else "<10 rows" if no_hist < 10 else
                     f"{no_hist} rows ({no_hist / 500 * 100:.1f}%)")
    # the LR-or-GBM choice of text-counts, in the section and in its metrics cell
    choice = results["methods"]["text-counts"]["classifier"]
    kept = choice["chosen"].upper()
    assert f"text-counts: {kept} kept: validation AUROC" in _cell(page, "classifier kept (LR or GBM)")
    assert results["text"]["text_model"]["checksum"] == tm["checksum"]


def test_method_cells_are_readable(run):
    _, _, _, results, report = run
    page = report.read_text()
    metrics = page.split("<h2>Metrics")[1].split("<h2>")[0]
    for name in METHODS:                          # the name a user types, and what it is in words
        assert f"<tr><td>{name}<br><span class='sub'>{html.escape(METHOD_WORDS[name])}</span>" in metrics
    choice = results["methods"]["text-counts"]["classifier"]
    auc = choice["validation_auroc"]
    kept, other = choice["chosen"], "lr" if choice["chosen"] == "gbm" else "gbm"
    assert (f"<b>{kept.upper()} kept: validation AUROC {auc[kept]:.3f} vs {other.upper()} {auc[other]:.3f}</b>"
            in metrics)
    assert auc[kept] >= auc[other]
    # the plots draw every method (two curve images, the few-shot panels with text-lr)
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 6


def test_no_serialised_text_and_the_folder_is_shareable(run, bert):
    cdm, task, _, _, report = run
    from omop_behrt.text.serialize import serialize
    texts = serialize(cdm, task.index).texts["text"].to_pylist()
    lines = {ln.strip() for t in texts for ln in t.splitlines() if "before" in ln and len(ln.strip()) > 20}
    assert len(lines) > 100                        # the serialiser's dated lines: "...: 3 times, last 2 years before"
    page = report.read_text()
    stored = (report.parent / "results.json").read_text()
    assert not [ln for ln in lines if ln in page or json.dumps(ln)[1:-1] in stored]
    assert check_shareable(report.parent) == []
    assert json.loads(stored)["text"]["text_model"]["name"] == bert.name


def test_small_counts_are_suppressed_and_missing_figures_say_so(run):
    results = copy.deepcopy(run[3])
    results["text"]["truncated"] = {"rows": 3}
    results["text"]["no_history"] = {"rows": 0}
    rows = dict(map(tuple, text_rows(shareable_results(results))))
    assert rows["records cut to fit the serialiser's budget"] == "<10 rows"
    assert rows["records with no history before the index date"] == "none"
    total = sum(v["rows"] for v in results["n"].values())
    results["text"]["truncated"] = {"rows": 25}
    assert dict(map(tuple, text_rows(shareable_results(results))))["records cut to fit the serialiser's budget"] \
        == f"25 rows ({25 / total * 100:.1f}%)"
    results["text"]["truncated"] = None                # an embed run that did not record it
    results["text"]["seconds"] = None
    rows = dict(map(tuple, text_rows(shareable_results(results))))
    assert rows["records cut to fit the serialiser's budget"] == "not recorded"
    assert rows["time to serialise and embed"] == "not recorded"
    assert rows["clinical notes"] == "not used"
    results["text"]["notes"] = {"mode": "append", "with_notes": {"rows": 120}}
    rows = dict(map(tuple, text_rows(shareable_results(results))))
    assert rows["clinical notes"] == (f"appended to the record's text; 120 rows ({120 / total * 100:.1f}%) with a "
                                      f"note before the index date")
    results["text"]["notes"]["with_notes"] = {"rows": 4}
    assert "; <10 rows with a note" in dict(map(tuple, text_rows(shareable_results(results))))["clinical notes"]
    assert np.isfinite(results["methods"]["text-lr"]["auroc"])

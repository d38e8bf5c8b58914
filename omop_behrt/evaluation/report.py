"""A self-contained HTML report of a comparison, written for the clinician who reads it.

Every plot is a PNG (matplotlib, Agg backend; :mod:`omop_behrt.evaluation.plots`) embedded as base64, so the report
is one file to mail or archive. Sections, each with a one-line "how to read this": the study in words (target
cohort, outcome by concept name, time at risk, exclusions, the data source from cdm_source, CDM and vocabulary
versions, the date, the omop-behrt version, the model: shape, pretraining steps, loss curve, validation masked-token
accuracy, vocabulary) and the outcome rate as a rate; attrition and splits; baseline characteristics by outcome
(Table 1, :mod:`omop_behrt.evaluation.characteristics`); with text methods, the text encoder's model, serialiser and
description coverage (:mod:`omop_behrt.evaluation.report_text`); metrics with 95% CIs and a warning box for results
not to take at face value (:func:`result_warnings`); ROC and PR curves; calibration; few-shot curves as small
multiples; a t-SNE map of the code embeddings coloured by CALIBER chapter; each common disease's 10 nearest codes by
cosine similarity (as in the BEHRT paper), by name; and last-layer attention, labelled by name. :func:`screenshot`
renders a page with headless Chromium (docs/render_report.py, the test).

The report is shareable by default (DESIGN.md, "What may leave a site"): the attention view is the mean over
the test persons between the most common tokens, every count below ``min_count`` shows as ``<10``, curves
step over groups of ``min_count`` persons and results.json holds aggregates only. One real person's attention
(``example_person``) is opt-in; the page then carries ``<meta name="omop-behrt-per-person">``, which
``omop-behrt check-shareable`` fails on.
"""
from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import numpy as np

from omop_behrt.evaluation import plots  # first: it says when matplotlib (the [report] extra) is missing
from omop_behrt.evaluation.metrics import SANE_SLOPE, result_warnings, shareable_results, write_results  # noqa: F401
from omop_behrt.shareable import MIN_COUNT, count_text, shown_count, suppressed
from omop_behrt.evaluation.metrics import format_ci as _ci
from omop_behrt.behrt.tokenizer import SPECIALS
from omop_behrt.evaluation.report_text import has_text, method_label, text_section
from omop_behrt.evaluation.inspection import attention_weights, mean_attention, nearest_codes  # noqa: F401
from omop_behrt.vocab.names import (CDM_SOURCE_COLUMNS, NO_CHAPTER, concept_details, concept_names,  # noqa: F401
                                    concept_names_by_id, data_source, token_chapters)

SECTIONS = ("Study", "Outcome and attrition", "Baseline characteristics", "Metrics", "ROC and precision-recall curves",
            "Calibration", "Few-shot curves", "Code embeddings (t-SNE)", "Nearest codes", "Attention")
#: the name of the <meta> a report carries when it holds a per-person section (check-shareable looks for it)
PER_PERSON_MARKER = "omop-behrt-per-person"


# -- HTML -----------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    """A table; a one-cell row spans the table (a block heading); cells given as ``Markup`` are not escaped."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if any(header) else ""
    cell = lambda c: c.html if isinstance(c, Markup) else html.escape(str(c))  # noqa: E731
    body = "".join(f"<tr class='block'><td colspan='{len(header)}'>{cell(r[0])}</td></tr>" if len(r) == 1 else
                   "<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{f' class={cls!r}' if cls else ''}>{f'<tr>{th}</tr>' if th else ''}{body}</table>"


class Markup:
    """HTML the report wrote itself (not escaped again)."""

    def __init__(self, html_text: str):
        self.html = html_text


def _how(text: str) -> str:
    return f"<p class='how'><b>How to read this:</b> {html.escape(text)}</p>"


def _model_facts(model, model_dir: Path) -> tuple[list[list], str | None]:
    """Rows describing the pretrained model, and its loss-curve plot (from metrics.json) when there is one."""
    from omop_behrt.behrt.model import BehrtConfig
    cfg, meta = model.config, model.metadata
    preset = next((name for name in ("tiny", "behrt") if all(
        getattr(BehrtConfig.preset(name), k) == getattr(cfg, k) for k in ("hidden", "layers", "heads",
                                                                            "intermediate", "max_len"))), "custom")
    params = sum(p.numel() for p in model.parameters())
    rows = [["model", f"BEHRT, {preset} shape: {cfg.layers} layers, hidden size {cfg.hidden}, {cfg.heads} heads, "
                      f"up to {cfg.max_len} tokens a person; {params / 1e6:.2f} M parameters"],
            ["model id", str(meta.get("model_id", "?"))]]
    curve = []
    if (model_dir / "metrics.json").exists():
        try:
            curve = json.loads((model_dir / "metrics.json").read_text())
        except ValueError:
            curve = []
    train, data = meta.get("training") or {}, meta.get("training_data") or {}
    epochs = max((r["epoch"] for r in curve if "epoch" in r), default=None)
    steps = train.get("steps")
    what = []
    if epochs is not None:
        what.append(f"{epochs + 1} epoch{'s' * (epochs != 0)}")
    if steps is not None:
        what.append(f"{steps:,} steps")
    if isinstance(data.get("train_persons"), int):
        what.append(f"{data['train_persons']:,} persons")
    if data.get("first_year") and data.get("last_year"):
        what.append(f"records {data['first_year']}-{data['last_year']}")
    if what:
        rows.append(["pretraining", ", ".join(what) + (f"; created {meta['created_at'][:10]}"
                                                       if meta.get("created_at") else "")])
    rows.append(["pretraining data censored at the index dates",
                 "yes (pretraining saw no event on or after any index date)" if data.get("censored_at") else
                 "no: pretrained on all events; if they include this task's persons, the model may have seen their "
                 "outcomes (leakage; censor with `extract --index-dates` as the demo does)"])
    m = meta.get("metrics") or {}
    if "val_acc" in m:
        rows.append(["validation masked-token accuracy",
                     f"{m['val_acc']:.3f}" + (f" (top-10 {m['val_top10']:.3f})" if "val_top10" in m else "") +
                     (f"; loss {m['val_loss']:.3f}" if "val_loss" in m else "")])
    if data.get("cdm_version") or data.get("vocabulary_version"):
        rows.append(["pretraining data: OMOP CDM / vocabulary version",
                     f"{data.get('cdm_version') or '?'} / {data.get('vocabulary_version') or 'not recorded'}"])
    vocab = meta.get("vocab", "?")
    rows.append(["vocabulary", f"{vocab}: {len(model.vocab) - len(SPECIALS):,} tokens, each seen in at least "
                               f"{data.get('min_count', MIN_COUNT)} persons"
                               + (f" (sha256 {str(meta['vocab_sha256'])[:12]})" if meta.get("vocab_sha256") else "")])
    return rows, plots.loss_plot(curve)


def _study_rows(definition: dict, attrition: dict, target: str | None, cdm, source: dict) -> list[list]:
    """What the study is, in words: target, outcome (by concept name), time at risk, exclusions, data source."""
    d = definition
    entries = attrition.get("target entries")
    rows = [["target cohort", (target or str(d.get("target", "?"))) +
             (f" ({entries:,} entries)" if isinstance(entries, int) else "")]]
    if d.get("outcome_cohort") is not None:
        outcome = f"cohort {d['outcome_cohort']}"
    else:
        ids = [int(i) for i in d.get("outcome_concepts") or []]
        try:
            names = concept_names_by_id(cdm, ids)
        except Exception:  # noqa: BLE001 - names are a nicety; without them the ids still say it
            names = {}
        outcome = "; ".join(f"{i} {names.get(i, '(name not in the concept table)' if cdm is not None else '')}"
                            .strip() for i in ids) or "?"
        if d.get("descendants"):
            outcome += ", with all its descendant concepts"
    rows.append(["outcome", outcome])
    if "tar_start" in d:
        rows.append(["time at risk", f"from day {d['tar_start']} to day {d['tar_end']} after the index date"
                     + (" (the index day itself not counted)" if d["tar_start"] > 0 else "")])
        excl = []
        if d.get("remove_prior_outcome"):
            lb = d.get("prior_outcome_lookback", 99999)
            excl.append("the outcome before the index date" + (" (any time)" if lb >= 99999 else
                                                                f" (within {lb:,} days)"))
        if d.get("min_prior_observation"):
            excl.append(f"under {d['min_prior_observation']:,} days of observation before the index date")
        if d.get("min_time_at_risk"):
            excl.append(f"under {d['min_time_at_risk']:,} days of observation after it"
                        + (" unless the outcome happened" if d.get("include_all_outcomes") else ""))
        if excl:
            rows.append(["excluded", "; ".join(excl)])
    if source:
        name = source.get("cdm_source_name") or source.get("cdm_source_abbreviation") or "OMOP CDM"
        extra = [f"{k.replace('_', ' ')} {source[k]}" for k in ("cdm_holder", "source_release_date") if k in source]
        rows.append(["data source", name + (f" ({', '.join(extra)})" if extra else "")])
        rows.append(["OMOP CDM / vocabulary version", f"{source.get('cdm_version', '?')} / "
                                                      f"{source.get('vocabulary_version', 'not recorded')}"])
    return rows


def _few_shot_table(rows: list[dict]) -> str:
    """The few-shot grid, one row per share of the labels, one AUROC (95% CI) column per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["fraction"], r["method"]): r for r in rows}
    body = []
    for f in sorted({r["fraction"] for r in rows}):
        first = next(r for r in rows if r["fraction"] == f)
        body.append([f"{f * 100:g}", count_text(first["n_train"]), count_text(first["train_positives"]),
                     *(_ci(cell[f, m], "auroc") if (f, m) in cell else "" for m in methods)])
    return _table(["% train labels", "n train", "with the outcome", *(f"{m} AUROC" for m in methods)], body)


def _metrics_rows(shown: dict, flags: dict[tuple[str, str], str]) -> list[list]:
    def cell(name: str, metric: str, text: str):
        return Markup(f"<span class='flag' title='{html.escape(flags[name, metric], quote=True)}'>⚠ "
                      f"{html.escape(text)}</span>") if (name, metric) in flags else text
    return [[Markup(method_label(n, m)), cell(n, "AUROC", _ci(m, "auroc")), _ci(m, "auprc"),
             cell(n, "Brier", _ci(m, "brier")),
             f"{m['calibration_intercept']:.2f}", cell(n, "calibration slope", f"{m['calibration_slope']:.2f}")]
            for n, m in shown["methods"].items()]


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.4}"
          "h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #e3e3e3;padding-bottom:.15em;"
          "margin-top:1.8em}table{border-collapse:collapse;margin:.8em 0;font-size:13px}td,th{border:1px solid "
          "#ccc;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f2f2f2}tr.block td{background:"
          "#fafafa;font-weight:bold}img{max-width:100%}p.how{background:#eef5fb;border-left:4px solid #4a90c2;"
          "padding:.4em .7em;font-size:13px}p.lead{font-size:1.1em}.warn{background:#fff4e0;border:2px solid "
          "#e8a33d;border-radius:4px;padding:.5em 1em;margin:1em 0}.warn h3{margin:.2em 0;color:#8a4b00}"
          "span.flag{color:#a33;font-weight:bold}table.t1 td:not(:first-child){text-align:right}"
          "table.near td:last-child{font-size:12px}table.near .sub{font-size:11px}.sub{color:#666;font-size:13px}")


def _attention_section(model, seqs, results: dict, names: dict[str, str], example_person: int | None,
                       min_count: int, labels=None) -> tuple[list[str], str]:
    """The Attention section's HTML, and the per-person <meta> (empty unless ``example_person`` is given)."""
    if seqs is None or not len(seqs):
        return ["<p>No sequences given.</p>"], ""          # (an example person needs them: checked before)
    if example_person is not None:
        rows = np.flatnonzero(seqs.subject_id == int(example_person))
        i = int(rows[np.argmax(seqs.lengths[rows])])
        meta = (f'<meta name="{PER_PERSON_MARKER}" content="attention example: one person\'s record '
                f'(subject {int(example_person)})">')
        about = ""
        if labels is not None and i < labels.num_rows:
            row = labels.slice(i, 1).to_pylist()[0]
            about = (f", index date {str(row['index_date'])[:10]}, "
                     f"{'had' if row.get('label') else 'did not have'} the outcome in the time at risk")
        return [f"<p><b>Patient-level data:</b> this section shows one person's record (asked for with "
                f"--example-person); keep this report inside the site.</p><p>Person {int(example_person)} "
                f"(row {i}){about}: {int(seqs.lengths[i])} tokens before the index date.</p>",
                f'<img src="{plots.attention_plot(model, seqs, i, names)}">'], meta
    test = results.get("test_predictions") or {}
    rows = np.flatnonzero(np.isin(seqs.subject_id, test["subject_id"])) if test.get("subject_id") else \
        np.arange(len(seqs))
    who = "test persons" if test.get("subject_id") else "persons"
    if len(rows) > 1000:                              # a seeded sample bounds the cost on large test sets
        rows = np.sort(np.random.default_rng(0).choice(rows, 1000, replace=False))
    agg = mean_attention(model, seqs, rows, min_count=min_count)
    if agg["n"] < min_count or not agg["ids"]:
        return [f"<p>Fewer than {min_count} {who}: the mean attention is not shown.</p>"], ""
    return [f"<p>Mean last-layer attention between the {len(agg['ids'])} tokens most persons have, over "
            f"{agg['n']:,} {who} (an aggregate: no single person's record). Grey: the two tokens occur "
            f"together in fewer than {min_count} persons.</p>",
            f'<img src="{plots.mean_attention_plot(model, agg, names)}">'], ""


def write_report(out: str | Path, results: dict, model_dir: str | Path, *, prep=None, seqs=None,
                 example_person: int | None = None, min_count: int = MIN_COUNT, cdm=None,
                 title: str = "omop-behrt prediction report", target: str | None = None, seed: int = 0) -> Path:
    """Write ``out/report.html`` (+ ``out/results.json``) for a comparison's results; returns the HTML path.

    Shareable by default: counts below ``min_count`` show as ``<10`` and the attention view is the mean over
    the test persons of ``seqs`` (the task's tokenised rows). ``prep`` (the comparison's
    :class:`~omop_behrt.evaluation.comparison.Prepared`) gives the sequences and the baseline characteristics table
    (stored in results.json too); ``cdm`` lends concept names and the data source; ``target`` says the target
    cohort in words. ``example_person`` (a subject id) draws that person's attention instead: patient-level,
    marked in the page.
    """
    from omop_behrt import __version__
    from omop_behrt.evaluation.characteristics import describe_rate, prepared_characteristics, table_rows
    from omop_behrt.behrt.model import Behrt
    seqs = seqs if seqs is not None else getattr(prep, "seqs", None)
    if example_person is not None and (seqs is None or not (seqs.subject_id == int(example_person)).any()):
        raise ValueError(f"example person: subject {int(example_person)} is not among the task's "
                         f"{0 if seqs is None else len(seqs):,} rows")
    out, model_dir = Path(out), Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    if prep is not None and "characteristics" not in results:
        results["characteristics"] = prepared_characteristics(prep, cdm=cdm, min_count=min_count)
    model = Behrt.load(model_dir)
    tokens = model.vocab.tokens[len(SPECIALS):]
    chapters = token_chapters(tokens, cdm)
    near = nearest_codes(model, tokens, chapters, min_count=min_count)
    try:
        names = concept_names(cdm, tokens)
        source = data_source(cdm)
    except Exception:  # noqa: BLE001 - names are a nicety; a CDM without a usable concept table just lacks them
        names, source = {}, {}
    shown = shareable_results(results, min_count)
    task = shown.get("task", {})
    definition, attrition = task.get("definition", {}), task.get("attrition", {})
    ch = shown.get("characteristics")
    warnings = result_warnings(shown)
    flags = {(w["method"], w["metric"]): w["why"] for w in warnings}
    model_rows, loss_png = _model_facts(model, model_dir)
    rate = describe_rate(ch["outcome"], definition) if ch else None

    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class='sub'>Written {time.strftime('%Y-%m-%d')} by omop-behrt {html.escape(__version__)}. "
             f"Aggregates only: every count of fewer than {min_count} persons shows as {suppressed(min_count)}."
             f"</p>", "<h2>Study</h2>"]
    if rate:
        parts.append(f"<p class='lead'><b>{html.escape(rate[0].upper() + rate[1:])}.</b></p>")
    parts += [_table(["", ""], _study_rows(definition, attrition, target, cdm, source) +
                     [["report date", time.strftime("%Y-%m-%d")], ["omop-behrt version", __version__]] + model_rows),
              f'<img src="{loss_png}">' if loss_png else "",
              _how("The question every model below answers: from a person's record before the index date, will "
                   "the outcome happen in the time at risk? The model was pretrained (masked-token prediction) "
                   "on records before the index dates and is then used as a feature extractor or fine-tuned.")]
    parts += ["<h2>Outcome and attrition</h2>",
              _table(["step", "entries"], [[k, count_text(v)] for k, v in attrition.items()]),
              _table(["split", "rows", "persons", "with the outcome"],
                     [[s, count_text(v["rows"]), count_text(v["persons"]), count_text(v["positives"])]
                      for s, v in shown.get("n", {}).items()]),
              _how("Attrition: how many target entries each exclusion removed. Splits are by person (no person is "
                   "in two); models learn on train, stop early on val, and every number below is on test.")]
    parts.append("<h2>Baseline characteristics</h2>")
    if ch:
        parts += [_table(["characteristic", "with the outcome", "without the outcome", "all"],
                         table_rows(ch, lambda c, n: f"{plots.short(n, 56)} ({c})" if n else c), cls="t1"),
                  _how(f"Persons in each column (percent of the column). Prior conditions and drugs: recorded any "
                       f"time before the index date, the {len(ch['conditions'])} and {len(ch['drugs'])} most common "
                       f"(domain from the {ch['domains_from']}). Large differences between the columns are what "
                       f"any model can use. {suppressed(min_count)}: fewer than {min_count} persons; "
                       f"'suppressed': hidden so that a {suppressed(min_count)} cell cannot be worked out.")]
    else:
        parts.append("<p>Not computed (pass the comparison's prepared data, <code>prep=</code>).</p>")
    if has_text(shown):
        parts += text_section(shown, _table, _how, min_count)
    parts.append("<h2>Metrics</h2>")
    if warnings:
        parts.append("<div class='warn'><h3>⚠ Check these results before reading them</h3><ul>" +
                     "".join(f"<li><b>{html.escape(w['method'])}</b>: {html.escape(w['why'])}</li>"
                             for w in warnings) + "</ul></div>")
    parts += [_table(["method", "AUROC (95% CI)", "AUPRC (95% CI)", "Brier (95% CI)", "cal. intercept",
                      "cal. slope"], _metrics_rows(shown, flags)),
              _how("AUROC: the chance that a person with the outcome gets a higher score than one without (0.5 = "
                   "chance, 1 = perfect). AUPRC: compare with the outcome rate, which a useless model scores. "
                   "Brier: mean squared error of the predicted risk (lower is better). Calibration: intercept 0 "
                   "and slope 1 are ideal. Intervals: 95% bootstrap over test persons. ⚠: see the box.")]
    roc_pr, cal = plots.curve_plots(shown, {w["method"] for w in warnings if w["metric"] == "calibration slope"})
    parts += ["<h2>ROC and precision-recall curves</h2>", f'<img src="{roc_pr}">',
              _how("Higher curves are better. ROC: dotted diagonal = chance. Precision-recall: dotted line = the "
                   f"outcome rate. Each step of a curve spans at least {min_count} persons."),
              "<h2>Calibration</h2>", f'<img src="{cal}">',
              _how("Each point is a group of persons with similar predicted risk: on the dotted diagonal, the "
                   "predicted risk matches the observed rate; below it the model over-predicts, above it under-"
                   "predicts. A cluster of points at one predicted risk means near-constant scores.")]
    parts.append("<h2>Few-shot curves</h2>")
    if shown.get("few_shot"):
        parts += [f'<img src="{plots.few_shot_plot(shown["few_shot"])}">',
                  _how("Test AUROC when each method learns from only part of the training labels (same test "
                       "set). A method that stays high with 1-5% of the labels needs few labelled cases, which is "
                       "what pretraining is meant to give. Wide bands: too few outcomes to tell methods apart. "
                       "AUPRC per point: results.json."),
                  _few_shot_table(shown["few_shot"])]
    else:
        parts.append("<p>Not run (pass few-shot fractions).</p>")
    parts += ["<h2>Code embeddings (t-SNE)</h2>", f'<img src="{plots.tsne_plot(model, tokens, chapters, seed)}">',
              _how("Each dot is a code of the model's vocabulary; codes the model learned to use alike sit close "
                   "together. Colour: CALIBER disease chapter (grey: not a CALIBER disease). Only neighbourhoods "
                   "mean something in t-SNE: distances between far-apart clusters do not."),
              "<h2>Nearest codes</h2>",
              _table(["code", "chapter", "persons", "10 nearest codes (cosine similarity)"],
                     [[Markup(f"{html.escape(plots.short(names.get(d['token'], d['token']), 40))}<br><span class='sub'>"
                              f"{html.escape(d['token'])}</span>"), d["chapter"],
                       count_text(shown_count(d["persons"], min_count)),
                       Markup(" · ".join(f"<span title='{html.escape(n['token'], quote=True)}'>"
                                         f"{html.escape(plots.short(names.get(n['token'], n['token']), 36))}</span> "
                                         f"<b>{n['cosine']:.2f}</b>" for n in d["nearest"]))] for d in near],
                     cls="near"),
              _how("The most common codes with a CALIBER chapter and the codes whose embeddings point the same way "
                   "(cosine 1 = same direction). Clinically related neighbours suggest the pretraining learned "
                   "something; unrelated ones suggest too little data or training.")]
    section, meta = _attention_section(model, seqs, results, names, example_person, min_count,
                                       labels=prep.task.labels if prep is not None else None)
    parts += ["<h2>Attention</h2>", *section,
              _how("Each cell: how much the row token attends to the column token in the model's last layer. "
                   "Attention shows where the model looks, not why it predicts: do not read it as an effect.")]
    page = (f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
    from omop_behrt.lock import writing_folder
    with writing_folder(out, "a report"):          # its page and results.json are one run's
        tmp = out / f".report.html.{os.getpid()}.tmp"
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out / "report.html")
        write_results(results, out / "results.json", min_count)
    return out / "report.html"


def chromium() -> str | None:
    """The headless Chromium (or Chrome) on PATH that :func:`screenshot` uses, None when there is none."""
    import shutil
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)


def screenshot(page: str | Path, png: str | Path, *, width: int = 1280, height: int = 9000,
               timeout: float = 120.0) -> Path:
    """Render an HTML file to PNG with headless Chromium (the page as a reader sees it), blank bottom cropped."""
    import subprocess
    import tempfile

    from PIL import Image
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="omop-behrt-shot-") as tmp:
        raw = Path(tmp) / "page.png"
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}", f"--window-size={width},{height}", f"--screenshot={raw}",
                        Path(page).resolve().as_uri()], check=True, capture_output=True, timeout=timeout)
        img = Image.open(raw).convert("RGB")
    rows = np.flatnonzero((np.asarray(img) < 250).any(axis=(1, 2)))        # the last row that is not blank
    img.crop((0, 0, img.width, min(img.height, int(rows[-1]) + 20 if len(rows) else img.height))).save(png)
    return png

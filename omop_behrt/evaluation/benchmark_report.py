"""The benchmark's HTML page: the macro table on top, then one table per task, the few-shot means and provenance.

Results a reader should not take at face value (a calibration slope outside 0.2-5, a Brier score no better than
the outcome rate, an AUROC whose CI holds 0.5:
:func:`omop_behrt.evaluation.metrics.result_warnings`) are marked and said.

One self-contained file (no scripts, no external assets); aggregates only, counts below ``min_count`` shown as
``<N``, so the page can leave the site like the other reports.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping

from omop_behrt.evaluation.benchmark import BASELINE
from omop_behrt.evaluation.metrics import result_warnings
from omop_behrt.vocab.fallback import coverage_line
from omop_behrt.shareable import MIN_COUNT

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}tr.base td{background:#fafafa;font-style:italic}
.win{color:#11632a;font-weight:600}.lose{color:#8a1c1c}p.note{color:#555;font-size:.9em}"""


def _ci(e: Mapping, k: str, signed: bool = False) -> str:
    if k not in e:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    ci = e.get(f"{k}_ci")
    return f.format(e[k]) + (f" ({f.format(ci[0])} to {f.format(ci[1])})" if ci else "")


def _count(n, min_count: int) -> str:
    """A count as shown: the results are already suppressed (``"<10"``); hide any raw small count too."""
    if isinstance(n, (int, float)) and 0 < n < min_count:
        return f"&lt;{min_count}"
    return html.escape(str(n))


def _table(head: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(f"<tr class='{c}'>" + "".join(f"<td>{v}</td>" for v in r) + "</tr>"
                   for r, c in zip(rows, classes or [""] * len(rows)))
    return f"<table><tr>{th}</tr>{body}</table>"


def render(out: Mapping, min_count: int = MIN_COUNT) -> str:
    """The page as a string."""
    esc = lambda v: html.escape(str(v))  # noqa: E731
    suite = out["suite"]
    macro = out.get("macro") or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>omop-behrt benchmark: {esc(suite['name'])}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>Benchmark: suite {esc(suite['name'])}</h1><p>{esc(suite.get('description', ''))}</p>"]
    rows, classes = [], []
    for m, e in (macro.get("methods") or {}).items():
        vs = e.get("vs_counts")
        cls = "" if vs is None else ("win" if e.get("vs_counts_ci", [vs])[0] > 0 else
                                     "lose" if e.get("vs_counts_ci", [0, vs])[-1] < 0 else "")
        rows.append([esc(m), _ci(e, "auroc"), _ci(e, "auprc"),
                     f"<span class='{cls}'>{_ci(e, 'vs_counts', True)}</span>" if vs is not None else "-"])
        classes.append("base" if m == BASELINE else "")
    parts.append(f"<h2>Macro over {len(macro.get('tasks', []))} tasks</h2>")
    parts.append(_table(["method", "AUROC (95% CI)", "AUPRC (95% CI)", "AUROC - counts (95% CI)"], rows, classes))
    parts.append("<p class='note'>Paired bootstrap over each task's test rows (the same resamples for every "
                 f"method; {out.get('n_boot', 0)} replicates). Counts = per task the better of counts + LR and "
                 "counts + GBM, judged on the test rows (which favours the baseline).</p>")
    if out.get("few_shot_macro"):
        fracs = sorted({r["fraction"] for r in out["few_shot_macro"]})
        by = {(r["method"], r["fraction"]): r["auroc"] for r in out["few_shot_macro"]}
        ms = list(dict.fromkeys(r["method"] for r in out["few_shot_macro"]))
        parts.append("<h2>Few-shot (mean AUROC over tasks)</h2>")
        parts.append(_table(["method"] + [f"{f * 100:g}% of labels" for f in fracs],
                            [[esc(m)] + [f"{by[(m, f)]:.3f}" if (m, f) in by else "-" for f in fracs] for m in ms]))
    parts.append("<h2>Tasks</h2>")
    specs = {t["name"]: t for t in suite["tasks"]}
    for name, res in out["tasks"].items():
        n = res.get("n", {})
        sizes = ", ".join(f"{s} {n[s]['rows']} rows / {_count(n[s]['positives'], min_count)} positives"
                          for s in ("train", "val", "test") if s in n)
        spec = specs.get(name, {})
        parts.append(f"<h3>{esc(name)}</h3><p>{esc(spec.get('description', ''))} (window days "
                     f"{esc(spec.get('window'))}). {sizes}.</p>")
        flags = result_warnings({"methods": res.get("methods", {}), "n": n})
        flagged = {(w["method"], w["metric"]) for w in flags}
        mark = lambda m, k, v: v + (" &#9888;" if (m, k) in flagged else "")  # noqa: E731
        rows = [[esc(m), mark(m, "AUROC", _ci(e, "auroc")), _ci(e, "auprc"),
                 mark(m, "Brier", f"{e['brier']:.3f}") if "brier" in e else "-",
                 mark(m, "calibration slope", f"{e['calibration_slope']:.2f}") if "calibration_slope" in e else "-"]
                for m, e in res.get("methods", {}).items()]
        parts.append(_table(["method", "AUROC (95% CI)", "AUPRC (95% CI)", "Brier", "calibration slope"], rows))
        parts.extend(f"<p class='note'>&#9888; {esc(w['method'])}: {esc(w['why'])}</p>" for w in flags)
    for name, why in (out.get("problems") or {}).items():
        parts.append(f"<p class='note'>{esc(name)}: {esc(why)}</p>")
    for note in suite.get("notes") or []:
        parts.append(f"<p class='note'>{esc(note)}</p>")
    parts.append("<h2>Provenance</h2>")
    parts.append(_table(["model", "vocabulary", "config", "coverage of the site's events", "leakage check"],
                        [[esc(k), esc(v.get("vocab")), esc(v.get("config")),
                          esc(coverage_line(v["coverage"]) if v.get("coverage") else "-"),
                          esc(v.get("leakage") or "none found")] for k, v in (out.get("models") or {}).items()]))
    att = out.get("attrition") or {}
    parts.append(_table(["index rows", "count"], [[esc(k), _count(v, min_count)] for k, v in att.items()]))
    parts.append(_table(["stage", "seconds"], [[esc(k), f"{v:.1f}"] for k, v in (out.get("seconds") or {}).items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(out: Mapping, path: str | Path, min_count: int = MIN_COUNT) -> Path:
    path = Path(path)
    path.write_text(render(out, min_count), encoding="utf-8")
    return path

"""A self-contained HTML report of a comparison: curves, calibration, few-shot, code map, neighbours, attention.

Every plot is a PNG (matplotlib, Agg backend) embedded as base64, so the report is one file to mail or
archive. Sections: task and numbers, metrics with 95% CIs, ROC and PR curves, calibration, few-shot curves,
a t-SNE map of the code embeddings coloured by CALIBER chapter, each common disease's 10 nearest codes by
cosine similarity (as in the BEHRT paper), and a last-layer attention heatmap for one person.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from .evaluate import format_ci as _ci  # noqa: E402
from .evaluate import write_results  # noqa: E402
from .tokenizer import SPECIALS  # noqa: E402

SECTIONS = ("Task", "Metrics", "ROC and precision-recall curves", "Calibration", "Few-shot curves",
            "Code embeddings (t-SNE)", "Nearest codes", "Attention")
_NO_CHAPTER = "not a CALIBER disease"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@torch.no_grad()
def attention_weights(model, seqs, i: int = 0, mean: bool = True) -> np.ndarray:
    """Last block's attention (T x T, mean over heads; heads x T x T without ``mean``) for sequence ``i``.


    The model's fast path (SDPA) returns no weights; this recomputes them for one sequence only.
    """
    from .pretrain import collate
    model.eval()
    b = collate(seqs, np.array([i]), model.config.extras)
    extras = {k: b[k] for k in model.config.extras}
    x = model.embeddings(b["input_ids"], b["ages"], b["segments"], b["positions"], extras)
    for block in model.blocks[:-1]:
        x = block(x, None)
    last = model.blocks[-1]
    B, T, H = x.shape
    heads = last.attn.heads
    q, k, _ = last.attn.qkv(last.ln1(x)).view(B, T, 3, heads, H // heads).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / (H // heads) ** 0.5, dim=-1)
    return w.mean(1)[0].numpy() if mean else w[0].numpy()


def token_chapters(tokens: list[str], cdm=None) -> list[str]:
    """CALIBER chapter of each token: CALIBER phenotypes directly, codes through the caliber vocabulary."""
    from .caliber import caliber_phenotypes
    from .vocab import map_events
    ph = caliber_phenotypes()
    by_pheno = dict(zip(ph["phenotype"].to_pylist(), ph["chapter"].to_pylist()))
    out = [by_pheno.get(t.split("/", 1)[1], _NO_CHAPTER) if t.startswith("CALIBER/") else _NO_CHAPTER for t in tokens]
    codes = [t for t in tokens if "/" in t and not t.startswith("CALIBER")]
    if codes:
        ev = pa.table({"subject_id": pa.array(np.arange(len(codes)), pa.int64()),
                       "time": pa.array(np.zeros(len(codes), "datetime64[us]")),
                       "code": pa.array(codes), "domain": pa.array(["condition"] * len(codes))})
        got = map_events(ev, "caliber(level=chapter)", cdm=cdm, progress=False, sort=False).tokens
        chap = {}
        for c, t in zip(got["code"].to_pylist(), got["token"].to_pylist()):
            chap.setdefault(c, t.split("/", 1)[1])
        pos = {t: i for i, t in enumerate(tokens)}
        for c, ch in chap.items():
            out[pos[c]] = ch
    return out


def concept_names(cdm, tokens: list[str]) -> dict[str, str]:
    """Concept names from the CDM's concept table for tokens shaped VOCABULARY_ID/concept_code."""
    from .adapters.omop import OmopCdm
    from .database import load_sql, render
    if cdm is None:
        return {}
    cdm = cdm if hasattr(cdm, "qtable") else OmopCdm(cdm)
    if not cdm.has_table("concept"):
        return {}
    pairs = [t.split("/", 1) for t in tokens if "/" in t]
    sql = render(load_sql("report/concept_names.sql"), {
        "concept": cdm.qtable("concept"), "c_name": cdm.col("concept", "concept_name"),
        "c_vocabulary_id": cdm.col("concept", "vocabulary_id"), "c_concept_code": cdm.col("concept", "concept_code")})
    t = cdm.db.query(sql, {"vocabs": [p[0] for p in pairs], "codes": [p[1] for p in pairs]})
    return dict(zip(t["token"].to_pylist(), t["name"].to_pylist())) if t.num_rows else {}


def nearest_codes(model, tokens: list[str], chapters: list[str], k: int = 10, n_diseases: int = 10) -> list[dict]:
    """For the ``n_diseases`` most common tokens with a CALIBER chapter: their ``k`` nearest codes by cosine."""
    E = model.embeddings.code.weight.detach().numpy()[len(SPECIALS):]
    E = E / np.linalg.norm(E, axis=1, keepdims=True).clip(1e-12)
    counts = np.asarray(model.vocab.counts[len(SPECIALS):])
    diseases = [i for i in np.argsort(-counts, kind="stable") if chapters[i] != _NO_CHAPTER][:n_diseases]
    S = E[diseases] @ E.T                     # (n_diseases, V): only the rows needed, never V x V
    S[np.arange(len(diseases)), diseases] = -np.inf
    out = []
    for r, i in enumerate(diseases):
        near = np.argsort(-S[r], kind="stable")[:k]
        out.append({"token": tokens[i], "chapter": chapters[i], "persons": int(counts[i]),
                    "nearest": [{"token": tokens[j], "cosine": float(S[r, j])} for j in near]})
    return out


def _curve_plots(results: dict) -> tuple[str, str]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for name, m in results["methods"].items():
        c = m["curves"]
        axes[0].plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"{name} ({m['auroc']:.3f})")
        axes[1].plot(c["pr"]["recall"], c["pr"]["precision"], label=f"{name} ({m['auprc']:.3f})")
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    prev = next(iter(results["methods"].values()))["prevalence"]
    axes[1].axhline(prev, ls=":", color="grey")
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUROC)")
    axes[1].set(xlabel="recall", ylabel="precision", title="Precision-recall (AUPRC)", ylim=(0, 1.02))
    for a in axes:
        a.legend(fontsize=7, loc="lower right" if a is axes[0] else "upper right")
    roc_pr = _png(fig)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for name, m in results["methods"].items():
        c = m["curves"]["calibration"]
        ax.plot(c["predicted"], c["observed"], "o-", ms=3, label=f"{name} (slope {m['calibration_slope']:.2f})")
        top = max(top, max(c["predicted"] + c["observed"]))
    ax.plot([0, top], [0, top], ":", color="grey")
    ax.set(xlabel="mean predicted risk (decile)", ylabel="observed outcome rate", title="Calibration")
    ax.legend(fontsize=7)
    return roc_pr, _png(fig)


def _few_shot_plot(rows: list[dict]) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        x = [r["fraction"] * 100 for r in rs]
        ax.plot(x, [r["auroc"] for r in rs], "o-", label=name)
        if all(r.get("auroc_ci") for r in rs):
            ax.fill_between(x, [r["auroc_ci"][0] for r in rs], [r["auroc_ci"][1] for r in rs], alpha=0.12)
    ax.set(xscale="log", xlabel="% of training labels", ylabel="test AUROC", title="Few-shot")
    ticks = sorted({r["fraction"] * 100 for r in rows})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.axhline(0.5, ls=":", color="grey")
    ax.legend(fontsize=7)
    return _png(fig)


def _tsne_plot(model, tokens: list[str], chapters: list[str], seed: int) -> str:
    from sklearn.manifold import TSNE
    E = model.embeddings.code.weight.detach().numpy()[len(SPECIALS):]
    xy = TSNE(n_components=2, perplexity=min(30.0, max(2.0, (len(E) - 1) / 3)), init="pca", random_state=seed,
              max_iter=500, metric="cosine").fit_transform(E)
    fig, ax = plt.subplots(figsize=(8, 6))
    cmap = plt.get_cmap("tab20")
    other = np.array([c == _NO_CHAPTER for c in chapters])
    ax.scatter(xy[other, 0], xy[other, 1], s=6, c="lightgrey", label=_NO_CHAPTER)
    for j, ch in enumerate(sorted(set(chapters) - {_NO_CHAPTER})):
        sel = np.array([c == ch for c in chapters])
        ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=cmap(j % 20), label=ch)
    ax.set(title="Code embeddings, t-SNE (cosine), coloured by CALIBER chapter", xticks=[], yticks=[])
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def _attention_plot(model, seqs, i: int, names: dict[str, str]) -> str:
    w = attention_weights(model, seqs, i)
    labels = [t if t in SPECIALS else names.get(t, t)[:28] for t in model.vocab.decode(seqs[i]["input_ids"])]
    T = len(labels)
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.22 * T), min(13, 1.5 + 0.2 * T)))
    im = ax.imshow(w, cmap="viridis")
    ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(T), labels, fontsize=6)
    ax.set_title("Last-layer attention (mean over heads): row = query token, column = key token")
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _png(fig)


def _table(header: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def write_report(out: str | Path, results: dict, model_dir: str | Path, *, seqs=None, person: int | None = None,
                 cdm=None, title: str = "omop-behrt prediction report", seed: int = 0) -> Path:
    """Write ``out/report.html`` (+ ``out/results.json``) for a comparison's results; returns the HTML path.

    ``seqs``: the task's tokenised rows, to draw one person's attention (``person``: a row; default the
    longest test-set positive, else the longest row). ``cdm`` lends concept names and Athena links.
    """
    from .model import Behrt
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = Behrt.load(model_dir)
    tokens = model.vocab.tokens[len(SPECIALS):]
    chapters = token_chapters(tokens, cdm)
    near = nearest_codes(model, tokens, chapters)
    wanted = sorted({n["token"] for d in near for n in d["nearest"]} | {d["token"] for d in near} | set(tokens))
    try:
        names = concept_names(cdm, wanted)
    except Exception:  # noqa: BLE001 - names are a nicety; a CDM without a usable concept table just lacks them
        names = {}
    label = lambda t: f"{t} {names[t]}" if t in names else t  # noqa: E731
    task = results.get("task", {})
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Task</h2>",
             _table(["setting", "value"], [[k, json.dumps(v) if isinstance(v, (list, dict)) else v]
                                           for k, v in task.get("definition", {}).items()]),
             _table(["step", "count"], [[k, v] for k, v in task.get("attrition", {}).items()]),
             _table(["split", "rows", "persons", "positives"],
                    [[s, v["rows"], v["persons"], v["positives"]] for s, v in results.get("n", {}).items()]),
             "<h2>Metrics</h2><p>Test split; 95% percentile bootstrap intervals. Calibration intercept: "
             "calibration-in-the-large; slope: Cox recalibration slope (1 is ideal).</p>",
             _table(["method", "AUROC", "AUPRC", "Brier", "cal. intercept", "cal. slope"],
                    [[n, _ci(m, "auroc"), _ci(m, "auprc"), _ci(m, "brier"), f"{m['calibration_intercept']:.2f}",
                      f"{m['calibration_slope']:.2f}"] for n, m in results["methods"].items()])]
    roc_pr, cal = _curve_plots(results)
    parts += ["<h2>ROC and precision-recall curves</h2>", f'<img src="{roc_pr}">', "<h2>Calibration</h2>",
              f'<img src="{cal}">', "<h2>Few-shot curves</h2>"]
    if results.get("few_shot"):
        parts += [f'<img src="{_few_shot_plot(results["few_shot"])}">',
                  _table(["method", "% train labels", "n train", "positives", "AUROC", "AUPRC"],
                         [[r["method"], f"{r['fraction'] * 100:g}", r["n_train"], r["train_positives"],
                           _ci(r, "auroc"), _ci(r, "auprc")] for r in results["few_shot"]])]
    else:
        parts.append("<p>Not run (pass few-shot fractions).</p>")
    parts += ["<h2>Code embeddings (t-SNE)</h2>", f'<img src="{_tsne_plot(model, tokens, chapters, seed)}">',
              "<h2>Nearest codes</h2><p>The most common codes with a CALIBER chapter and their 10 nearest codes "
              "by cosine similarity of the code embeddings.</p>",
              _table(["code", "chapter", "persons", "10 nearest (cosine)"],
                     [[label(d["token"]), d["chapter"], d["persons"],
                       "; ".join(f"{label(n['token'])} ({n['cosine']:.2f})" for n in d["nearest"])] for d in near])]
    parts.append("<h2>Attention</h2>")
    if seqs is not None and len(seqs):
        if person is None:
            test = results.get("test_predictions", {})
            pos = set(s for s, y in zip(test.get("subject_id", []), test.get("y", [])) if y)
            cand = np.flatnonzero(np.isin(seqs.subject_id, list(pos))) if pos else np.arange(len(seqs))
            cand = cand if len(cand) else np.arange(len(seqs))
            person = int(cand[np.argmax(seqs.lengths[cand])])
        parts += [f"<p>Person {int(seqs.subject_id[person])} (row {person}), {int(seqs.lengths[person])} tokens "
                  f"before the index date.</p>", f'<img src="{_attention_plot(model, seqs, person, names)}">']
    else:
        parts.append("<p>No sequences given.</p>")
    style = ("body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;"
             "vertical-align:top}th{background:#f2f2f2}img{max-width:100%}pre{background:#f7f7f7;padding:.6em;"
             "font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    write_results(results, out / "results.json")
    return out / "report.html"

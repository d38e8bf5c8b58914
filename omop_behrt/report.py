"""A self-contained HTML report of a comparison: curves, calibration, few-shot, code map, neighbours, attention.

Every plot is a PNG (matplotlib, Agg backend) embedded as base64, so the report is one file to mail or
archive. Sections: task and numbers, metrics with 95% CIs, ROC and PR curves, calibration, few-shot curves,
a t-SNE map of the code embeddings coloured by CALIBER chapter, each common disease's 10 nearest codes by
cosine similarity (as in the BEHRT paper), and last-layer attention.

The report is shareable by default (DESIGN.md, "What may leave a site"): the attention view is the mean over
the test persons between the most common tokens, every count below ``min_count`` shows as ``<10``, curves
step over groups of ``min_count`` persons and results.json holds aggregates only. One real person's attention
(``example_person``) is opt-in; the page then carries ``<meta name="omop-behrt-per-person">``, which
``omop-behrt check-shareable`` fails on.
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

from .evaluate import shareable_results, write_results  # noqa: E402
from .shareable import MIN_COUNT, suppressed  # noqa: E402
from .evaluate import format_ci as _ci  # noqa: E402
from .tokenizer import CLS, SEP, SPECIALS  # noqa: E402

SECTIONS = ("Task", "Metrics", "ROC and precision-recall curves", "Calibration", "Few-shot curves",
            "Code embeddings (t-SNE)", "Nearest codes", "Attention")
_NO_CHAPTER = "not a CALIBER disease"
#: the name of the <meta> a report carries when it holds a per-person section (check-shareable looks for it)
PER_PERSON_MARKER = "omop-behrt-per-person"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@torch.no_grad()
def _attention(model, seqs, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Last block's attention (B x heads x T x T, padding masked) and the padded ids (B x T) for rows ``idx``."""
    from .batches import collate
    model.eval()
    b = collate(seqs, np.asarray(idx), model.config.extras)
    extras = {k: b[k] for k in model.config.extras}
    valid = b["attention_mask"].bool()
    mask = valid[:, None, None, :]
    x = model.embeddings(b["input_ids"], b["ages"], b["segments"], b["positions"], extras)
    for block in model.blocks[:-1]:
        x = block(x, mask)
    last = model.blocks[-1]
    B, T, H = x.shape
    heads = last.attn.heads
    q, k, _ = last.attn.qkv(last.ln1(x)).view(B, T, 3, heads, H // heads).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2) / (H // heads) ** 0.5).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1), torch.where(valid, b["input_ids"], -1)


def attention_weights(model, seqs, i: int = 0, mean: bool = True) -> np.ndarray:
    """Last block's attention (T x T, mean over heads; heads x T x T without ``mean``) for sequence ``i``.

    The model's fast path (SDPA) returns no weights; this recomputes them for one sequence only.
    """
    w, _ = _attention(model, seqs, np.array([i]))
    return w.mean(1)[0].numpy() if mean else w[0].numpy()


def mean_attention(model, seqs, rows: np.ndarray, *, k: int = 25, min_count: int = MIN_COUNT,
                   batch: int = 32) -> dict:
    """Mean last-layer attention between the ``k`` tokens most persons in ``rows`` have: an aggregate, no person.

    Cell (a, b) averages the attention from every occurrence of token a to every occurrence of token b over the
    rows; a cell whose two tokens occur together in fewer than ``min_count`` persons is NaN, and tokens held by
    fewer than ``min_count`` persons are not candidates. Returns ``ids`` (k), ``weights`` and ``persons`` (k x k)
    and ``n`` (persons).
    """
    rows = np.asarray(rows)
    V = len(model.vocab)
    lens = seqs.lengths[rows]
    subj = np.unique(seqs.subject_id[rows], return_inverse=True)[1]
    first = np.cumsum(lens) - lens                              # each row's start in the gathered tokens
    tok = seqs.input_ids[np.repeat(seqs.offsets[rows] - first, lens) + np.arange(int(lens.sum()))]
    pairs = np.unique(np.repeat(subj, lens).astype(np.int64) * V + tok)        # (person, token) present
    per_token = np.bincount(pairs % V, minlength=V)
    per_token[[i for i, t in enumerate(SPECIALS) if i not in (CLS, SEP)]] = 0
    ids = [int(i) for i in np.argsort(-per_token, kind="stable")[:k] if per_token[i] >= min_count]
    local = np.full(V, -1)
    local[ids] = np.arange(len(ids))
    K, n = len(ids), int(subj.max() + 1) if len(subj) else 0
    present = np.zeros((n, K), np.int32)
    hit = local[pairs % V] >= 0
    present[(pairs // V)[hit], local[pairs % V][hit]] = 1
    persons = present.T @ present
    total, count = np.zeros(K * K), np.zeros(K * K)
    for s in range(0, len(rows), batch):
        w, got = _attention(model, seqs, rows[s:s + batch])
        w = w.mean(1).numpy()
        li = np.where(got.numpy() >= 0, local[got.numpy().clip(0)], -1)             # (B, T) local index or -1
        both = (li[:, :, None] >= 0) & (li[:, None, :] >= 0)
        cell = (li[:, :, None] * K + li[:, None, :])[both]
        total += np.bincount(cell, weights=w[both], minlength=K * K)
        count += np.bincount(cell, minlength=K * K)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = (total / count).reshape(K, K)
    weights[persons < min_count] = np.nan
    return {"ids": ids, "weights": weights, "persons": persons, "n": n}


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


def nearest_codes(model, tokens: list[str], chapters: list[str], k: int = 10, n_diseases: int = 10,
                  min_count: int = MIN_COUNT) -> list[dict]:
    """For the ``n_diseases`` most common tokens with a CALIBER chapter: their ``k`` nearest codes by cosine.

    Only tokens seen in >= ``min_count`` persons are shown (a model built with a lower min_count has rarer ones).
    """
    E = model.embeddings.code.weight.detach().numpy()[len(SPECIALS):]
    E = E / np.linalg.norm(E, axis=1, keepdims=True).clip(1e-12)
    counts = np.asarray(model.vocab.counts[len(SPECIALS):])
    diseases = [i for i in np.argsort(-counts, kind="stable")
                if chapters[i] != _NO_CHAPTER and counts[i] >= min_count][:n_diseases]
    S = E[diseases] @ E.T                     # (n_diseases, V): only the rows needed, never V x V
    S[:, counts < min_count] = -np.inf
    S[np.arange(len(diseases)), diseases] = -np.inf
    out = []
    for r, i in enumerate(diseases):
        near = [j for j in np.argsort(-S[r], kind="stable")[:k] if np.isfinite(S[r, j])]
        out.append({"token": tokens[i], "chapter": chapters[i], "persons": int(counts[i]),
                    "nearest": [{"token": tokens[j], "cosine": float(S[r, j])} for j in near]})
    return out


def _curve_plots(results: dict) -> tuple[str, str]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    drawn = {name: m for name, m in results["methods"].items() if m.get("curves")}
    for name, m in drawn.items():
        c = m["curves"]
        axes[0].plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"{name} ({m['auroc']:.3f})")
        axes[1].plot(c["pr"]["recall"], c["pr"]["precision"], label=f"{name} ({m['auprc']:.3f})")
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    prev = next(iter(results["methods"].values()), {}).get("prevalence")
    if prev is not None:
        axes[1].axhline(prev, ls=":", color="grey")
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUROC)")
    axes[1].set(xlabel="recall", ylabel="precision", title="Precision-recall (AUPRC)", ylim=(0, 1.02))
    for a in axes:
        if drawn:
            a.legend(fontsize=7, loc="lower right" if a is axes[0] else "upper right")
        else:
            a.text(0.5, 0.5, "withheld: too few outcomes", ha="center", transform=a.transAxes)
    roc_pr = _png(fig)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for name, m in drawn.items():
        c = m["curves"]["calibration"]
        ax.plot(c["predicted"], c["observed"], "o-", ms=3, label=f"{name} (slope {m['calibration_slope']:.2f})")
        top = max(top, max(c["predicted"] + c["observed"]))
    ax.plot([0, top], [0, top], ":", color="grey")
    ax.set(xlabel="mean predicted risk (quantile bins of >= 10 persons)", ylabel="observed outcome rate",
           title="Calibration")
    if drawn:
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


def _mean_attention_plot(model, agg: dict, names: dict[str, str]) -> str:
    labels = [t if t in SPECIALS else names.get(t, t)[:28] for t in model.vocab.decode(np.array(agg["ids"]))]
    K = len(labels)
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.3 * K), min(13, 2.5 + 0.28 * K)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(agg["weights"]), cmap=cmap)
    ax.set_xticks(range(K), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(K), labels, fontsize=7)
    ax.set_title("Mean last-layer attention (mean over heads and occurrences)\nrow = query token, column = key token")
    fig.colorbar(im, ax=ax, fraction=0.03)
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


def _attention_section(model, seqs, results: dict, names: dict[str, str], example_person: int | None,
                       min_count: int) -> tuple[list[str], str]:
    """The Attention section's HTML, and the per-person <meta> (empty unless ``example_person`` is given)."""
    if seqs is None or not len(seqs):
        return ["<p>No sequences given.</p>"], ""          # (an example person needs them: checked before)
    if example_person is not None:
        rows = np.flatnonzero(seqs.subject_id == int(example_person))
        i = int(rows[np.argmax(seqs.lengths[rows])])
        meta = (f'<meta name="{PER_PERSON_MARKER}" content="attention example: one person\'s record '
                f'(subject {int(example_person)})">')
        return [f"<p><b>Patient-level data:</b> this section shows one person's record (asked for with "
                f"--example-person); keep this report inside the site.</p><p>Person {int(example_person)} "
                f"(row {i}), {int(seqs.lengths[i])} tokens before the index date.</p>",
                f'<img src="{_attention_plot(model, seqs, i, names)}">'], meta
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
            f'<img src="{_mean_attention_plot(model, agg, names)}">'], ""


def write_report(out: str | Path, results: dict, model_dir: str | Path, *, seqs=None,
                 example_person: int | None = None, min_count: int = MIN_COUNT, cdm=None,
                 title: str = "omop-behrt prediction report", seed: int = 0) -> Path:
    """Write ``out/report.html`` (+ ``out/results.json``) for a comparison's results; returns the HTML path.

    Shareable by default: counts below ``min_count`` show as ``<10`` and the attention view is the mean over
    the test persons of ``seqs`` (the task's tokenised rows). ``example_person`` (a subject id) draws that
    person's attention instead: patient-level, marked in the page. ``cdm`` lends concept names.
    """
    from .model import Behrt
    if example_person is not None and (seqs is None or not (seqs.subject_id == int(example_person)).any()):
        raise ValueError(f"example person: subject {int(example_person)} is not among the task's "
                         f"{0 if seqs is None else len(seqs):,} rows")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = Behrt.load(model_dir)
    tokens = model.vocab.tokens[len(SPECIALS):]
    chapters = token_chapters(tokens, cdm)
    near = nearest_codes(model, tokens, chapters, min_count=min_count)
    wanted = sorted({n["token"] for d in near for n in d["nearest"]} | {d["token"] for d in near} | set(tokens))
    try:
        names = concept_names(cdm, wanted)
    except Exception:  # noqa: BLE001 - names are a nicety; a CDM without a usable concept table just lacks them
        names = {}
    label = lambda t: f"{t} {names[t]}" if t in names else t  # noqa: E731
    shown = shareable_results(results, min_count)
    task = shown.get("task", {})
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Task</h2>",
             _table(["setting", "value"], [[k, json.dumps(v) if isinstance(v, (list, dict)) else v]
                                           for k, v in task.get("definition", {}).items()]),
             _table(["step", "count"], [[k, v] for k, v in task.get("attrition", {}).items()]),
             _table(["split", "rows", "persons", "positives"],
                    [[s, v["rows"], v["persons"], v["positives"]] for s, v in shown.get("n", {}).items()]),
             "<h2>Metrics</h2><p>Test split; 95% percentile bootstrap intervals. Calibration intercept: "
             f"calibration-in-the-large; slope: Cox recalibration slope (1 is ideal). Counts below {min_count} "
             f"show as {suppressed(min_count)}; curves step over groups of at least {min_count} persons.</p>",
             _table(["method", "AUROC", "AUPRC", "Brier", "cal. intercept", "cal. slope"],
                    [[n, _ci(m, "auroc"), _ci(m, "auprc"), _ci(m, "brier"), f"{m['calibration_intercept']:.2f}",
                      f"{m['calibration_slope']:.2f}"] for n, m in shown["methods"].items()])]
    roc_pr, cal = _curve_plots(shown)
    parts += ["<h2>ROC and precision-recall curves</h2>", f'<img src="{roc_pr}">', "<h2>Calibration</h2>",
              f'<img src="{cal}">', "<h2>Few-shot curves</h2>"]
    if shown.get("few_shot"):
        parts += [f'<img src="{_few_shot_plot(shown["few_shot"])}">',
                  _table(["method", "% train labels", "n train", "positives", "AUROC", "AUPRC"],
                         [[r["method"], f"{r['fraction'] * 100:g}", r["n_train"], r["train_positives"],
                           _ci(r, "auroc"), _ci(r, "auprc")] for r in shown["few_shot"]])]
    else:
        parts.append("<p>Not run (pass few-shot fractions).</p>")
    parts += ["<h2>Code embeddings (t-SNE)</h2>", f'<img src="{_tsne_plot(model, tokens, chapters, seed)}">',
              "<h2>Nearest codes</h2><p>The most common codes with a CALIBER chapter and their 10 nearest codes "
              "by cosine similarity of the code embeddings.</p>",
              _table(["code", "chapter", "persons", "10 nearest (cosine)"],
                     [[label(d["token"]), d["chapter"], d["persons"] if d["persons"] >= min_count else
                       suppressed(min_count),
                       "; ".join(f"{label(n['token'])} ({n['cosine']:.2f})" for n in d["nearest"])] for d in near])]
    section, meta = _attention_section(model, seqs, results, names, example_person, min_count)
    parts += ["<h2>Attention</h2>", *section]
    style = ("body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;"
             "vertical-align:top}th{background:#f2f2f2}img{max-width:100%}pre{background:#f7f7f7;padding:.6em;"
             "font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    write_results(results, out / "results.json", min_count)
    return out / "report.html"

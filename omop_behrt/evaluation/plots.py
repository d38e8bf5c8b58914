"""The report's figures: matplotlib (Agg backend) drawn into base64 PNG data URLs, so the report stays one file.

ROC and precision-recall, calibration, few-shot small multiples, the t-SNE map of code embeddings by CALIBER
chapter, mean and per-person last-layer attention, and the pretraining loss curve. Labels are names, never ids.
"""
from __future__ import annotations

import base64
import io

try:
    import matplotlib
except ModuleNotFoundError as e:  # an optional part: the core installs without it
    raise ModuleNotFoundError(f"the HTML report needs matplotlib ({e}): pip install 'omop-behrt[report]'",
                              name=e.name) from e

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from omop_behrt.behrt.tokenizer import SPECIALS  # noqa: E402
from omop_behrt.evaluation.inspection import attention_weights  # noqa: E402
from omop_behrt.evaluation.report_text import line_style  # noqa: E402
from omop_behrt.vocab.names import NO_CHAPTER  # noqa: E402


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def curve_plots(results: dict, flagged: set[str]) -> tuple[str, str]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    drawn = {name: m for name, m in results["methods"].items() if m.get("curves")}
    for name, m in drawn.items():
        c = m["curves"]
        axes[0].plot(c["roc"]["fpr"], c["roc"]["tpr"], line_style(name), label=f"{name} ({m['auroc']:.3f})")
        axes[1].plot(c["pr"]["recall"], c["pr"]["precision"], line_style(name), label=f"{name} ({m['auprc']:.3f})")
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    prev = next(iter(results["methods"].values()), {}).get("prevalence")
    if prev is not None:
        axes[1].axhline(prev, ls=":", color="grey")
        axes[1].text(1.0, prev, "outcome rate ", ha="right", va="bottom", fontsize=7, color="grey")
    axes[0].set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
                title="ROC (AUROC in brackets)")
    axes[1].set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)",
                title="Precision-recall (AUPRC in brackets)", ylim=(0, 1.02))
    for a in axes:
        if drawn and a is axes[1] and len(drawn) > 6:        # many methods: beside the plot, not over the curves
            a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        elif drawn:
            a.legend(fontsize=7, loc="lower right" if a is axes[0] else "upper right")
        else:
            a.text(0.5, 0.5, "withheld: too few outcomes", ha="center", transform=a.transAxes)
    roc_pr = png(fig)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    top = 0.0
    for name, m in drawn.items():
        c = m["curves"]["calibration"]
        mark = " (!)" if name in flagged else ""
        ax.plot(c["predicted"], c["observed"], "o" + line_style(name), ms=3,
                label=f"{name}: slope {m['calibration_slope']:.2f}{mark}")
        top = max(top, max(c["predicted"] + c["observed"]))
    ax.plot([0, top], [0, top], ":", color="grey")
    ax.set(xlabel="mean predicted risk (quantile bins of >= 10 persons)", ylabel="observed outcome rate",
           title="Calibration (dotted: perfect)")
    if drawn:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return roc_pr, png(fig)


def few_shot_plot(rows: list[dict]) -> str:
    """Small multiples: one panel per method, AUROC against % of training labels with a light 95% band."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cols = len(methods) if len(methods) <= 4 else 3
    nrows = -(-len(methods) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols, 3.0 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    ticks = sorted({r["fraction"] * 100 for r in rows})
    lo = min([0.45] + [r["auroc_ci"][0] for r in rows if r.get("auroc_ci")] + [r["auroc"] for r in rows])
    for k, (ax, name) in enumerate(zip(axes.flat, methods)):
        rs = [r for r in rows if r["method"] == name]
        x = [r["fraction"] * 100 for r in rs]
        colour = plt.get_cmap("tab10")(k % 10)
        ax.plot(x, [r["auroc"] for r in rs], "o-", color=colour, ms=4)
        if all(r.get("auroc_ci") for r in rs):
            ax.fill_between(x, [r["auroc_ci"][0] for r in rs], [r["auroc_ci"][1] for r in rs], color=colour,
                            alpha=0.15, lw=0)
        ax.axhline(0.5, ls=":", color="grey")
        ax.set_title(name, fontsize=10)
        ax.set(xscale="log", ylim=(max(0.0, lo - 0.02), 1.0))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.tick_params(labelbottom=True)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("% of training labels")
    for ax in axes[:, 0]:
        ax.set_ylabel("test AUROC")
    fig.suptitle("Few-shot: test AUROC by share of training labels (band: 95% CI; dotted: chance)", fontsize=11)
    fig.tight_layout()
    return png(fig)


def tsne_plot(model, tokens: list[str], chapters: list[str], seed: int, n_labels: int = 6) -> str:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    E = model.embeddings.code.weight.detach().numpy()[len(SPECIALS):]
    with threadpool_limits(1):       # OpenMP threads fight over a busy machine: 10x slower than one thread
        xy = TSNE(n_components=2, perplexity=min(30.0, max(2.0, (len(E) - 1) / 3)), init="pca", random_state=seed,
                  max_iter=500, metric="cosine").fit_transform(E)
    fig, ax = plt.subplots(figsize=(10, 6.5))
    cmap = plt.get_cmap("tab20")
    other = np.array([c == NO_CHAPTER for c in chapters])
    ax.scatter(xy[other, 0], xy[other, 1], s=6, c="lightgrey", label=f"{NO_CHAPTER} ({int(other.sum())})")
    named = sorted(set(chapters) - {NO_CHAPTER}, key=lambda ch: (-chapters.count(ch), ch))
    for j, ch in enumerate(named):
        sel = np.array([c == ch for c in chapters])
        ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=cmap(j % 20), label=f"{ch} ({int(sel.sum())})")
    for j, ch in enumerate(named[:n_labels]):               # the largest chapters named at their centre
        sel = np.array([c == ch for c in chapters])
        if sel.sum() < 3:
            break
        cx, cy = np.median(xy[sel], axis=0)
        ax.annotate(ch, (cx, cy), fontsize=8, weight="bold", color="#222", ha="center",
                    bbox=dict(boxstyle="round,pad=0.25", fc="white", ec=cmap(j % 20), lw=2, alpha=0.9))
    ax.set(title="Code embeddings, t-SNE (cosine), coloured by CALIBER chapter (codes per chapter)",
           xticks=[], yticks=[])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, markerscale=1.5)
    return png(fig)


def short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def token_labels(model, ids, names: dict[str, str]) -> list[str]:
    return [t if t in SPECIALS else short(names[t]) if t in names else t for t in model.vocab.decode(np.array(ids))]


def mean_attention_plot(model, agg: dict, names: dict[str, str]) -> str:
    labels = token_labels(model, agg["ids"], names)
    K = len(labels)
    fig, ax = plt.subplots(figsize=(min(15, 4 + 0.32 * K), min(14, 3 + 0.3 * K)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(agg["weights"]), cmap=cmap)
    ax.set_xticks(range(K), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(K), labels, fontsize=7)
    ax.set_title("Mean last-layer attention (mean over heads and occurrences)\nrow = query token, column = key token")
    fig.colorbar(im, ax=ax, fraction=0.03, label="attention weight")
    return png(fig)


def attention_plot(model, seqs, i: int, names: dict[str, str]) -> str:
    w = attention_weights(model, seqs, i)
    labels = token_labels(model, seqs[i]["input_ids"], names)
    T = len(labels)
    fig, ax = plt.subplots(figsize=(min(15, 3 + 0.24 * T), min(14, 2.5 + 0.22 * T)))
    im = ax.imshow(w, cmap="viridis")
    ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(T), labels, fontsize=6)
    ax.set_title("Last-layer attention (mean over heads): row = query token, column = key token")
    fig.colorbar(im, ax=ax, fraction=0.03, label="attention weight")
    return png(fig)


def loss_plot(curve: list[dict]) -> str | None:
    rows = [r for r in curve if "loss" in r and "step" in r]
    if len(rows) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["loss"] for r in rows], color="tab:blue")
    axes[0].set(xlabel="step", ylabel="training loss", title="Pretraining: masked-token loss")
    axes[1].plot(steps, [r.get("masked_acc", np.nan) for r in rows], color="tab:green", label="training")
    final = next((r for r in reversed(curve) if "val_acc" in r), None)
    if final:
        axes[1].plot([final["step"]], [final["val_acc"]], "D", color="tab:red", label="validation (end)")
        axes[1].legend(fontsize=7)
    axes[1].set(xlabel="step", ylabel="accuracy", title="Masked-token accuracy")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)

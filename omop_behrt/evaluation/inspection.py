"""What a model learned, read off its weights: last-layer attention (one sequence, or the mean over persons
between common tokens, an aggregate) and each common disease's nearest codes by cosine (as in the BEHRT paper).

Needs torch only; the HTML report (:mod:`omop_behrt.evaluation.report`) draws these.
"""
from __future__ import annotations

import numpy as np
import torch

from omop_behrt.behrt.tokenizer import CLS, SEP, SPECIALS
from omop_behrt.shareable import MIN_COUNT
from omop_behrt.vocab.names import NO_CHAPTER


@torch.no_grad()
def _attention(model, seqs, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Last block's attention (B x heads x T x T, padding masked) and the padded ids (B x T) for rows ``idx``."""
    from omop_behrt.behrt.batches import collate
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


def nearest_codes(model, tokens: list[str], chapters: list[str], k: int = 10, n_diseases: int = 10,
                  min_count: int = MIN_COUNT) -> list[dict]:
    """For the ``n_diseases`` most common tokens with a CALIBER chapter: their ``k`` nearest codes by cosine.

    Only tokens seen in >= ``min_count`` persons are shown (a model built with a lower min_count has rarer ones).
    """
    E = model.embeddings.code.weight.detach().numpy()[len(SPECIALS):]
    E = E / np.linalg.norm(E, axis=1, keepdims=True).clip(1e-12)
    counts = np.asarray(model.vocab.counts[len(SPECIALS):])
    diseases = [i for i in np.argsort(-counts, kind="stable")
                if chapters[i] != NO_CHAPTER and counts[i] >= min_count][:n_diseases]
    S = E[diseases] @ E.T                     # (n_diseases, V): only the rows needed, never V x V
    S[:, counts < min_count] = -np.inf
    S[np.arange(len(diseases)), diseases] = -np.inf
    out = []
    for r, i in enumerate(diseases):
        near = [j for j in np.argsort(-S[r], kind="stable")[:k] if np.isfinite(S[r, j])]
        out.append({"token": tokens[i], "chapter": chapters[i], "persons": int(counts[i]),
                    "nearest": [{"token": tokens[j], "cosine": float(S[r, j])} for j in near]})
    return out

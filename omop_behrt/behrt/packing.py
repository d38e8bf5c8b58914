"""Packed batches: several persons' sequences side by side in one row, each attending only to itself.

A row of ``width`` tokens holds whole sequences (best-fit, so little of it is padding); the model gets
``seq_index`` (which sequence of the batch each token belongs to, -1 on padding) and builds a block-diagonal
attention mask from it (:meth:`omop_behrt.behrt.model.Behrt.attention_mask`). Positions, ages and segments are
each sequence's own, so a person's hidden states are those it gets alone (up to float rounding); per-person
pooling and the PLOS head read ``starts`` (each sequence's first token in the flattened batch).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from omop_behrt.behrt.shards import MappedSequences
from omop_behrt.behrt.tokenizer import PAD, Sequences

#: row widths are rounded up to a multiple of this (shapes repeat, so kernels and allocations are reused)
WIDTH_STEP = 16


def row_width(lengths: np.ndarray, max_len: int | None = None) -> int:
    """The row width for these sequences: the longest, rounded up to :data:`WIDTH_STEP` (at most ``max_len``
    when that is still >= the longest)."""
    longest = int(np.max(lengths, initial=1))
    w = -(-longest // WIDTH_STEP) * WIDTH_STEP
    return max(longest, min(w, max_len)) if max_len else w


def pack_rows(lengths: np.ndarray, width: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """Sequences -> rows of at most ``width`` tokens (indices into ``lengths``), best fit.

    Each sequence, taken in ``order`` (default: longest first, which packs tightest), goes into the open row
    with the least room that still fits it, else a new row. The loop is per sequence (not per token); the
    search for a row is one numpy call over the ``width + 1`` room counts.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > width:
        i = int(np.argmax(lengths))
        raise ValueError(f"sequence {i} has {int(lengths[i])} tokens, more than the row width {width}")
    if order is None:
        order = np.lexsort((np.arange(len(lengths)), -lengths))
    by_room: list[list[int]] = [[] for _ in range(width + 1)]     # room -> rows with exactly that room left
    count = np.zeros(width + 1, dtype=np.int64)
    rows: list[list[int]] = []
    room = np.empty(0, dtype=np.int64)
    for i in order:
        n = int(lengths[i])
        fits = np.flatnonzero(count[n:])
        if len(fits):
            r = by_room[n + int(fits[0])].pop()
            count[n + int(fits[0])] -= 1
        else:
            r = len(rows)
            rows.append([])
            room = np.append(room, width)
        rows[r].append(int(i))
        room[r] -= n
        by_room[int(room[r])].append(r)
        count[int(room[r])] += 1
    return [np.asarray(r, dtype=np.int64) for r in rows]


def packed_plan(lengths: np.ndarray, batch_tokens: int, width: int, seed: int = 0, epoch: int = 0,
                shuffle: bool = False) -> list[list[np.ndarray]]:
    """Batches of packed rows: ``max(1, batch_tokens // width)`` rows of ``width`` tokens each.

    ``shuffle``: sequences taken in a seeded random order per epoch (rows then mix persons differently
    each epoch) and the batches shuffled; else longest first, deterministic.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)) if shuffle else None
    rows = pack_rows(lengths, width, order)
    per = max(1, int(batch_tokens) // int(width))
    out = [rows[k:k + per] for k in range(0, len(rows), per)]
    if shuffle:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def collate_packed(seqs: Sequences | MappedSequences, rows: list[np.ndarray], width: int,
                   extras: dict[str, int]) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Rows of sequences -> ``(idx, batch)``: ``idx`` the sequences in batch order, ``batch`` the (R, width)
    token tensors plus ``seq_index`` (R, width; -1 on padding), ``starts`` (each sequence's first token in the
    flattened batch), ``plos`` per sequence and ``sex`` per token."""
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    sel = seqs.select(idx)
    lens = sel.lengths.astype(np.int64)
    row_of = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    first = np.cumsum(lens) - lens                                  # each sequence's first token in sel
    row_first = first[np.searchsorted(row_of, np.arange(len(rows)))]
    starts = row_of * width + first - row_first[row_of]             # ... in the flattened (R * width) batch
    dest = np.repeat(starts - first, lens) + np.arange(int(lens.sum()))
    size = len(rows) * width

    def place(values: np.ndarray, fill: int) -> torch.Tensor:
        out = np.full(size, fill, np.int64)
        out[dest] = values
        return torch.from_numpy(out.reshape(len(rows), width))

    batch = {"input_ids": place(sel.input_ids, PAD), "ages": place(sel.ages, 0), "segments": place(sel.segments, 0),
             "positions": place(sel.positions, 0), "seq_index": place(np.repeat(np.arange(len(idx)), lens), -1),
             "starts": torch.from_numpy(starts), "plos": torch.from_numpy(sel.plos.astype(np.float32))}
    batch["attention_mask"] = batch["seq_index"] >= 0
    if "sex" in extras:
        batch["sex"] = place(np.repeat(sel.sex.astype(np.int64), lens), 0)
    return idx, batch


def packed_device_batches(seqs: Sequences | MappedSequences, batch_tokens: int, device: str | torch.device,
                          extras: dict[str, int], *, width: int | None = None, max_len: int | None = None,
                          plan: list[list[np.ndarray]] | None = None, seed: int = 0, epoch: int = 0,
                          shuffle: bool = False) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield ``(idx, batch)`` of packed rows on ``device`` (the packed twin of ``batches.device_batches``)."""
    width = width or row_width(seqs.lengths, max_len)
    if plan is None:
        plan = packed_plan(seqs.lengths, batch_tokens, width, seed, epoch, shuffle)
    for rows in plan:
        idx, b = collate_packed(seqs, rows, width, extras)
        yield idx, {k: v.to(device, non_blocking=True) for k, v in b.items()}


def packed_pool(hidden: torch.Tensor, batch: dict[str, torch.Tensor], pooling: str, pooler=None) -> torch.Tensor:
    """One vector per packed sequence (P, H), in ``seq_index`` order: [CLS] through ``pooler`` (tanh(W h + b)),
    the mean of its tokens, or the mean of its last visit's tokens."""
    H = hidden.shape[-1]
    flat = hidden.reshape(-1, H)
    starts = batch["starts"]
    if pooling == "cls":
        return torch.tanh(pooler(flat[starts]))
    seq = batch["seq_index"].reshape(-1)
    real = seq >= 0
    seq, tok = seq[real], flat[real]
    P = len(starts)
    if pooling == "last_visit":
        pos = batch["positions"].reshape(-1)[real]
        last = torch.full((P,), -1, dtype=pos.dtype, device=pos.device).scatter_reduce(0, seq, pos, "amax")
        keep = pos == last[seq]
        seq, tok = seq[keep], tok[keep]
    sums = torch.zeros(P, H, dtype=hidden.dtype, device=hidden.device).index_add_(0, seq, tok)
    counts = torch.bincount(seq, minlength=P).to(hidden.dtype).clamp_min(1.0)
    return sums / counts[:, None]


def packed_vectors(model, batch: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    """One vector per sequence of a packed batch (P, H), the last block computed only where ``pooling`` reads
    (each [CLS], or each last visit's tokens; every token for ``mean``); equal to :func:`packed_pool` over the
    full hidden states up to float rounding."""
    args = {k: v for k, v in batch.items() if k not in ("starts", "plos")}
    if pooling == "mean":
        return packed_pool(model(**args), batch, pooling)
    seq, starts = batch["seq_index"], batch["starts"]
    if pooling == "cls":
        keep = torch.zeros_like(seq, dtype=torch.bool)
        keep.view(-1)[starts] = True
        return torch.tanh(model.pooler(model(**args, keep=keep)))      # row-major order = sequence order
    real = seq >= 0
    pos = batch["positions"]
    last = torch.full((len(starts),), -1, dtype=pos.dtype, device=pos.device)
    last = last.scatter_reduce(0, seq[real], pos[real], "amax")
    keep = real & (pos == last[seq.clamp_min(0)])
    tok, s = model(**args, keep=keep), seq[keep]
    sums = torch.zeros(len(starts), tok.shape[-1], dtype=tok.dtype, device=tok.device).index_add_(0, s, tok)
    return sums / torch.bincount(s, minlength=len(starts)).to(tok.dtype).clamp_min(1.0)[:, None]

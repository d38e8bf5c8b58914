"""Batches of token sequences for the model: length-bucketed under a token budget, padded, on a device; and
what a batch holds to be predicted under the next-visit objective (:func:`next_visit_targets`).

Training (pretrain, heads) and inference (embed, report) share these, so inference never imports a training
module.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from omop_behrt.behrt.shards import MappedSequences
from omop_behrt.behrt.tokenizer import PAD, Sequences


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when torch sees a GPU, else CPU; asking for CUDA without one is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device(device)


def batches(lengths: np.ndarray, batch_tokens: int, seed: int, epoch: int, shuffle: bool = True) -> list[np.ndarray]:
    """Length-bucketed batches under a token budget (padded size B x max_len <= batch_tokens), seeded per epoch.

    Sequences are sorted by length plus a little noise (so batch mates vary between epochs), cut greedily,
    and the batch order is shuffled: padding stays a few percent of the tokens.
    """
    rng = np.random.default_rng([seed, epoch])
    noise = rng.uniform(0, 4, len(lengths)) if shuffle else np.zeros(len(lengths))
    order = np.lexsort((np.arange(len(lengths)), lengths + noise))
    cuts, start, longest = [], 0, 0
    for i, n in enumerate(lengths[order]):             # one pass over sequences (not tokens) per epoch
        longest_if = max(longest, n)
        if i > start and (i - start + 1) * longest_if > batch_tokens:
            cuts.append(i)
            start, longest_if = i, n
        longest = longest_if
    out = np.split(order, cuts)
    if shuffle:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def collate(seqs: Sequences | MappedSequences, idx: np.ndarray, extras: dict[str, int]) -> dict[str, torch.Tensor]:
    """Pad sequences ``idx`` to the batch's longest -> tensors for the model (rows gathered by ``seqs.select``,
    so memory-mapped shards read only this batch's pages)."""
    rows = seqs.select(idx)
    lens = rows.lengths
    valid = np.arange(int(lens.max()))[None, :] < lens[:, None]

    def pad(values: np.ndarray, fill: int) -> torch.Tensor:
        out = np.full(valid.shape, fill, np.int64)
        out[valid] = values                         # row-major order of the valid cells = the rows' token order
        return torch.from_numpy(out)

    batch = {"input_ids": pad(rows.input_ids, PAD), "ages": pad(rows.ages, 0), "segments": pad(rows.segments, 0),
             "positions": pad(rows.positions, 0), "attention_mask": torch.from_numpy(valid),
             "plos": torch.from_numpy(rows.plos.astype(np.float32))}
    if "sex" in extras:
        batch["sex"] = torch.from_numpy(rows.sex.astype(np.int64))
    return batch


def token_budget(seqs: Sequences | MappedSequences, batch_tokens: int) -> int:
    """``batch_tokens`` raised to the longest sequence, so that no sequence is alone in a batch only for length."""
    return max(int(batch_tokens), int(seqs.lengths.max(initial=1)))


def device_batches(seqs: Sequences | MappedSequences, batch_tokens: int, device: str | torch.device,
                   extras: dict[str, int], seed: int = 0, epoch: int = 0, shuffle: bool = False, *,
                   plan: list[np.ndarray] | None = None
                   ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield ``(idx, batch)``: :func:`batches` under :func:`token_budget`, each :func:`collate`-d onto ``device``.

    ``plan``: index batches already cut (one DDP rank's share, a resumed epoch's rest), used as they are.
    """
    if plan is None:
        plan = batches(seqs.lengths, token_budget(seqs, batch_tokens), seed, epoch, shuffle=shuffle)
    for idx in plan:
        yield idx, {k: v.to(device, non_blocking=True) for k, v in collate(seqs, idx, extras).items()}


def next_visit_targets(input_ids: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor,
                       vocab_size: int, first_code: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each visit followed by another ends (B, T) and the multi-hot (Q, vocab) of the next visit's codes.

    A visit is a run of equal positions; its last token (the closing [SEP]) is the one that, under the causal
    mask, has seen its visit and every earlier one and nothing later. Codes are ids >= ``first_code`` (no
    specials, no time tokens). Row q of the targets belongs to the q-th True of the mask in row-major order
    (``hidden[end]``). Vectorised: one scatter over the batch's tokens.
    """
    B = input_ids.shape[0]
    pos = positions.masked_fill(~attention_mask, -1)
    prev = torch.cat([torch.full_like(pos[:, :1], -2), pos[:, :-1]], 1)
    nxt = torch.cat([pos[:, 1:], torch.full_like(pos[:, :1], -1)], 1)
    rank = torch.cumsum(attention_mask & (pos != prev), 1) - 1              # visit number in its sequence, 0..
    n_visits = torch.where(attention_mask, rank, -1).max(1, keepdim=True).values + 1
    end = attention_mask & (nxt != pos) & (rank < n_visits - 1)             # last token of a visit with a successor
    P = max(1, int(n_visits.max()))
    slot = torch.arange(B, device=pos.device)[:, None] * P + rank           # (sequence, visit) -> one flat slot
    row_of = torch.full((B * P,), -1, dtype=torch.long, device=pos.device)
    row_of[slot[end]] = torch.arange(int(end.sum()), device=pos.device)
    code = attention_mask & (input_ids >= first_code) & (rank > 0)          # each code -> its previous visit's row
    target = torch.zeros(int(end.sum()), vocab_size, device=pos.device)
    target[row_of[slot[code] - 1], input_ids[code]] = 1.0
    return end, target

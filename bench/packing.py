"""Packed BEHRT batches against length-bucketed ones and Hugging Face's BERT, on the same sequences (issue 16).

Sides, each on the same synthetic sequences as bench/peers.py's ``transformer`` stage (400 sequences of 20-200
tokens, visits of 5 tokens, BEHRT shape: 6 layers, hidden 288, 12 heads, intermediate 512, fp32 CPU):
  * ours packed: several sequences per row (best fit, rows as wide as the longest sequence rounded up to 16),
    block-diagonal attention mask, the last block at the tokens read only (``keep``: the masked tokens in
    training, each [CLS] in inference), MLM logits on the masked tokens only;
  * ours bucketed: the library's length-bucketed padded batches (``batches.batches`` + ``collate``), the last
    block at the tokens read only, as ``pretrain.Objective`` does now;
  * ours bucketed full: the same batches, every block at every token (the library before issue 16; what
    bench/peers.py measures);
  * HF: ``BertForMaskedLM`` (training: logits at every position) / ``BertModel`` (inference), SDPA, on the
    bucketed batches.
Training runs the sequences of the first ``--steps`` bucketed batches (AdamW, one step a batch), packed into
as many packed batches as they fill; inference runs all sequences. Real (unpadded) tokens per second; the
padding share of each side's batches; the sides alternate (each round starts with the next one) over
``--rounds`` rounds; medians, ratios to HF and the load average at each measurement (``--cpu-time``: per CPU
second of the process instead of per wall second, for a shared, loaded machine).

    python bench/packing.py [--rounds 3] [--steps 15] [--vocab 600] [--precision fp32|bf16]
                            [--out bench/results/packing.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int, vocab: int, seed: int = 0):
    """bench/peers.py's transformer data (built inside its ``transformer_stage``, so rebuilt here the same way):
    lengths 20-200, a visit every 5 tokens, random codes and ages."""
    from omop_behrt.behrt.tokenizer import Sequences
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 200, n)
    off = np.concatenate([[0], np.cumsum(lengths)])
    pos = np.concatenate([np.arange(k) // 5 for k in lengths]).astype(np.int16)
    return Sequences(off, rng.integers(5, vocab, int(off[-1])).astype(np.int32),
                     rng.integers(0, 90, int(off[-1])).astype(np.int16), (pos % 2).astype(np.int8), pos,
                     np.arange(n), np.zeros(n, np.int64), np.zeros(n, np.int8), np.zeros(n, np.int8))


#: time the sides by the process's CPU seconds (``--cpu-time``) instead of wall seconds: less sensitive to
#: what else runs on a shared machine (a thread waiting for a core costs wall time, not CPU time)
CPU_TIME = False


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> int:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    from omop_behrt.behrt.batches import batches, collate
    from omop_behrt.behrt.model import Behrt, BehrtConfig, pool
    from omop_behrt.behrt.packing import collate_packed, packed_plan, packed_vectors, row_width
    from omop_behrt.behrt.pretrain import IGNORE, mask_tokens

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--sequences", type=int, default=400)
    ap.add_argument("--vocab", type=int, default=600)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--cpu-time", action="store_true", help="tokens per CPU second instead of per wall second")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: every side under torch.autocast(bf16), as pretrain/embed --precision bf16 run ours")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "packing.json")
    args = ap.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu_time
    if args.threads:
        torch.set_num_threads(args.threads)

    def amp():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    V, bt = args.vocab, args.batch_tokens
    seqs = synthetic(args.sequences, V)
    lengths = seqs.lengths
    cfg = BehrtConfig(vocab_size=V, dropout=0.1)
    hf_cfg = BertConfig(vocab_size=V, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                        max_position_embeddings=cfg.max_len, type_vocab_size=2, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.0, attn_implementation="sdpa")

    plan = batches(lengths, bt, 0, 0, shuffle=False)
    bucketed = [collate(seqs, idx, {}) for idx in plan]
    width = row_width(lengths, cfg.max_len)
    packed = [collate_packed(seqs, rows, width, {})[1] for rows in packed_plan(lengths, bt, width)]
    train_idx = np.concatenate(plan[:args.steps])
    train_seqs = seqs.select(train_idx)
    packed_train = [collate_packed(train_seqs, rows, width, {})[1]
                    for rows in packed_plan(train_seqs.lengths, bt, width)]
    gen = torch.Generator().manual_seed(0)
    masked = [mask_tokens(b["input_ids"], V, gen) for b in bucketed[:args.steps]]
    masked_packed = [mask_tokens(b["input_ids"], V, gen) for b in packed_train]

    def share(bs: list[dict]) -> float:
        real = sum(int(b["attention_mask"].sum()) for b in bs)
        return round(1 - real / sum(b["input_ids"].numel() for b in bs), 4)

    def train_ours(data, masks, keep: bool = True) -> float:
        torch.manual_seed(0)
        m = Behrt(cfg).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        t = time.process_time() if CPU_TIME else time.perf_counter()
        for b, (ids, labels) in zip(data, masks):
            chosen = labels != IGNORE
            with amp():
                h = m(ids, b["ages"], b["segments"], b["positions"], b["attention_mask"],
                      seq_index=b.get("seq_index"), keep=chosen if keep else None)
                loss = F.cross_entropy(m.mlm_logits(h if keep else h[chosen]).float(), labels[chosen])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.process_time() if CPU_TIME else time.perf_counter()) - t

    def train_hf() -> float:
        torch.manual_seed(0)
        m = BertForMaskedLM(hf_cfg).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        t = time.process_time() if CPU_TIME else time.perf_counter()
        for b, (ids, labels) in zip(bucketed, masked):
            with amp():
                out = m(input_ids=ids, attention_mask=b["attention_mask"].long(), token_type_ids=b["segments"],
                        position_ids=b["positions"].clamp(0, cfg.max_len - 1), labels=labels)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        return (time.process_time() if CPU_TIME else time.perf_counter()) - t

    def infer_ours(data, keep: bool = True) -> float:
        m = Behrt(cfg).eval()
        t = time.process_time() if CPU_TIME else time.perf_counter()
        with torch.inference_mode(), amp():
            for b in data:
                if "seq_index" in b:
                    packed_vectors(m, b, "cls")
                    continue
                args = (b["input_ids"], b["ages"], b["segments"], b["positions"], b["attention_mask"])
                if keep:
                    first = torch.zeros_like(b["attention_mask"])
                    first[:, 0] = True
                    m.pool(m(*args, keep=first)[:, None])
                else:
                    pool(m, m(*args), b, "cls")
        return (time.process_time() if CPU_TIME else time.perf_counter()) - t

    def infer_hf() -> float:
        m = BertModel(hf_cfg).eval()
        t = time.process_time() if CPU_TIME else time.perf_counter()
        with torch.inference_mode(), amp():
            for b in bucketed:
                m(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(),
                  token_type_ids=b["segments"], position_ids=b["positions"].clamp(0, cfg.max_len - 1))
        return (time.process_time() if CPU_TIME else time.perf_counter()) - t

    train_real, real = int(lengths[train_idx].sum()), int(lengths.sum())
    sides = {"train": {"ours packed": lambda: train_ours(packed_train, masked_packed),
                       "ours bucketed": lambda: train_ours(bucketed[:args.steps], masked),
                       "ours bucketed full": lambda: train_ours(bucketed[:args.steps], masked, keep=False),
                       "hf": train_hf},
             "infer": {"ours packed": lambda: infer_ours(packed), "ours bucketed": lambda: infer_ours(bucketed),
                       "ours bucketed full": lambda: infer_ours(bucketed, keep=False), "hf": infer_hf}}
    tokens = {"train": train_real, "infer": real}
    padding = {w: {"ours packed": share(p), "ours bucketed": share(b), "ours bucketed full": share(b), "hf": share(b)}
               for w, p, b in (("train", packed_train, bucketed[:args.steps]), ("infer", packed, bucketed))}
    runs = {k: {n: [] for n in v} for k, v in sides.items()}
    for what in ("infer", "train"):
        sides[what]["ours bucketed"]()                          # warm-up: allocator, kernels, first-call costs
    for r in range(args.rounds):
        for what, fns in sides.items():
            names = list(fns)
            k = r % len(names)
            for name in names[k:] + names[:k]:                  # each round starts with the next side
                before = load()
                secs = fns[name]()
                runs[what][name].append({"tokens_per_s": round(tokens[what] / secs), "seconds": round(secs, 3),
                                         "load": before})
                print(f"round {r + 1} {what:<5} {name:<18} {tokens[what] / secs:>9,.0f} real tok/s  "
                      f"load {before}", flush=True)
    med = {w: {n: statistics.median(x["tokens_per_s"] for x in v) for n, v in d.items()} for w, d in runs.items()}
    loads = [x["load"] for d in runs.values() for v in d.values() for x in v]
    result = {"sequences": args.sequences, "vocab": V, "batch_tokens": bt, "row_width": width,
              "train_sequences": len(train_idx), "real_tokens": tokens, "padding_share": padding,
              "threads": torch.get_num_threads(), "precision": args.precision,
              "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
              "clock": "cpu" if CPU_TIME else "wall", "rounds": args.rounds,
              "runs": runs,
              "median_tokens_per_s": med,
              "ratio_over_hf": {w: {n: round(v / m["hf"], 2) for n, v in m.items()} for w, m in med.items()},
              "ratio_packed_over_bucketed": {w: round(m["ours packed"] / m["ours bucketed"], 2)
                                             for w, m in med.items()},
              "load_average": [min(loads), max(loads)], "cpus": os.cpu_count()}
    print(f"\n{'median real tok/s':<8} {'side':<19} {'tok/s':>8} {'/ HF':>6} {'padding':>8}")
    for w in ("train", "infer"):
        for n, v in med[w].items():
            print(f"{w:<8} {n:<19} {v:>8,.0f} {result['ratio_over_hf'][w][n]:>5}x {padding[w][n]:>8.1%}")
    print(f"padding share: {padding}\nload average {result['load_average']} on {os.cpu_count()} CPUs, "
          f"vocab {V}, row width {width}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

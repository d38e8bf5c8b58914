"""Benchmark the text encoder: patients/s and tokens/s with the packaged all-MiniLM-L6-v2, against a naive loop.

Two measurements on the same texts, in the same run:
  * ours : TextEncoder.encode (every token embedded: texts chunked to the 256-token window, chunks of all
           texts batched longest first under a padded-token budget, chunk vectors length-weighted per text)
  * naive: one text at a time, no sorting, truncated at 512 tokens (what a per-row loop with the tokenizer's
           defaults does; it drops every token past 512 and runs past the model's 256-token training length)
The texts are synthetic but shaped like omop_behrt.text.serialize's output (a header, then per-domain lines of
descriptions with counts and times before index), with lengths drawn from a log-normal (median ~350 tokens,
long tail to ~2,500). Prints a table and writes bench/out/text_encoder.json.

    python bench/text_encoder.py [--texts 500] [--threads 2] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from omop_behrt.text.encoder import TextEncoder

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTIONS = {
    "Conditions": ["Gastrointestinal hemorrhage", "Osteoarthritis of knee", "Essential hypertension",
                   "Acute bronchitis", "Type 2 diabetes mellitus without complication", "Viral sinusitis",
                   "Chronic obstructive lung disease",
                   "Fracture of forearm", "Sprain of ankle", "Hyperlipidemia", "Anemia", "Atrial fibrillation",
                   "Acute viral pharyngitis", "Concussion with no loss of consciousness", "Otitis media"],
    "Drugs": ["Acetaminophen 325 MG Oral Tablet", "Naproxen sodium 220 MG Oral Tablet",
              "Amoxicillin 250 MG Oral Capsule",
              "Metformin hydrochloride 500 MG Oral Tablet", "Aspirin 81 MG Oral Tablet", "Lisinopril 10 MG Oral Tablet",
              "Clopidogrel 75 MG Oral Tablet", "Simvastatin 20 MG Oral Tablet", "Penicillin V Potassium 250 MG"],
    "Procedures": ["Colonoscopy", "Electrocardiographic procedure", "Plain chest X-ray", "Suture open wound",
                   "Bone immobilization", "Upper gastrointestinal endoscopy", "Screening for occult blood"],
    "Measurements": ["Hemoglobin [Mass/volume] in Blood: 11.2 g/dL", "Body mass index: 31.4 kg/m2",
                     "Systolic blood pressure: 142 mm[Hg]", "Glucose [Mass/volume] in Serum or Plasma: 131 mg/dL",
                     "Creatinine [Mass/volume] in Serum or Plasma: 1.1 mg/dL", "Body weight: 84.2 kg"],
    "Visits": ["Outpatient visit", "Inpatient visit, length of stay 4 days", "Emergency room visit"],
}


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Texts laid out like the serialiser's: header, then domain sections of described, counted, dated lines."""
    rng = np.random.default_rng(seed)
    lines_per_text = np.clip(rng.lognormal(np.log(28), 0.8, n).astype(int), 3, 220)
    out = []
    for n_lines in lines_per_text:
        parts = [f"Age at index: {rng.integers(18, 90)} years. Sex: {rng.choice(['female', 'male'])}."]
        sections = rng.multinomial(n_lines, [0.35, 0.3, 0.12, 0.15, 0.08])
        for (title, names), k in zip(DESCRIPTIONS.items(), sections):
            if not k:
                continue
            parts.append(f"{title}:")
            for _ in range(k):
                name, when = rng.choice(names), rng.integers(1, 120)
                count = rng.integers(1, 12)
                stamp = f"{when} months before" if when < 24 else f"{when // 12} years before"
                parts.append(f"- {name}: {count} times, last {stamp}" if count > 1 else f"- {name}: {stamp}")
        out.append("\n".join(parts))
    return out


def naive(enc: TextEncoder, texts: list[str], device: str) -> tuple[float, int, np.ndarray]:
    """One text at a time, truncated at 512 tokens, mean-pooled and normalised like the model's own modules."""
    body, tok = enc.net[0].auto_model, enc.tokenizer
    t, tokens, out = time.perf_counter(), 0, []
    with torch.inference_mode():
        for text in texts:
            b = tok(text, truncation=True, max_length=512, return_tensors="pt").to(device)
            h = body(**b).last_hidden_state[0]
            v = torch.nn.functional.normalize(h.mean(0), dim=0)
            out.append(v.float().cpu().numpy())
            tokens += int(b["input_ids"].shape[1])
    return time.perf_counter() - t, tokens, np.stack(out)


def main() -> None:
    """Run both measurements on the same texts and report patients/s, tokens/s and their ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-tokens", type=int, default=8192)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = synthetic_texts(args.texts)

    t = time.perf_counter()
    enc = TextEncoder.default(device=args.device, batch_tokens=args.batch_tokens)
    load_s = time.perf_counter() - t
    enc.encode(texts[:8])                                   # warm-up (allocator, kernels)
    chunks, counts = enc.chunks(texts)
    real = np.array([sum(len(c) for c in chunks[s:s + k]) for s, k in
                     zip(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)])
    ours_tokens = int(sum(len(c) + 2 for c in chunks))     # every token, with [CLS]/[SEP] per chunk
    t = time.perf_counter()
    ours_vec = enc.encode(texts)
    ours_s = time.perf_counter() - t

    naive_s, naive_tokens, naive_vec = naive(enc, texts, args.device)
    cut = int((real + 2 > 512).sum())
    lost = int(np.clip(real + 2 - 512, 0, None).sum())
    short = counts == 1
    agree = float(np.mean(np.sum(ours_vec[short] * naive_vec[short], 1))) if short.any() else float("nan")

    rows = [("ours (chunked, sorted, batched)", ours_s, ours_tokens, int(real.sum())),
            ("naive (1 at a time, cut at 512)", naive_s, naive_tokens, int(real.sum()) - lost)]
    print(f"{len(texts)} texts, tokens per text median {int(np.median(real))}, p90 {int(np.percentile(real, 90))}, "
          f"max {int(real.max())}; {int(counts.sum())} chunks of <= {enc.max_tokens} tokens; "
          f"{cut} texts longer than 512 (naive drops {lost} tokens, {lost / real.sum():.1%})")
    print(f"{'method':34} {'s':>8} {'patients/s':>11} {'tokens/s':>10} {'text tokens kept':>17}")
    for name, s, tok, kept in rows:
        print(f"{name:34} {s:8.2f} {len(texts) / s:11.1f} {tok / s:10.0f} {kept:17d}")
    ratio_p, ratio_t = naive_s / ours_s, (ours_tokens / ours_s) / (naive_tokens / naive_s)
    print(f"ratio ours/naive: patients/s x{ratio_p:.2f}, tokens/s x{ratio_t:.2f}; model load {load_s:.1f} s; "
          f"cosine ours vs naive on single-chunk texts {agree:.4f}")

    result = {"device": args.device, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "python": sys.version.split()[0], "model": enc.name, "dims": enc.dims,
              "window": enc.max_tokens, "checksum": enc.checksum(), "texts": len(texts),
              "tokens_per_text": {"median": int(np.median(real)), "p90": int(np.percentile(real, 90)),
                                  "max": int(real.max())},
              "chunks": int(counts.sum()), "texts_over_512": cut, "naive_tokens_dropped": lost,
              "ours": {"seconds": ours_s, "patients_per_s": len(texts) / ours_s, "tokens_per_s": ours_tokens / ours_s,
                       "tokens": ours_tokens, "batch_tokens": args.batch_tokens},
              "naive": {"seconds": naive_s, "patients_per_s": len(texts) / naive_s,
                        "tokens_per_s": naive_tokens / naive_s, "tokens": naive_tokens},
              "ratio_patients_per_s": ratio_p, "ratio_tokens_per_s": ratio_t, "load_seconds": load_s,
              "cosine_single_chunk_ours_vs_naive": agree}
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_encoder.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'text_encoder.json'}")


if __name__ == "__main__":
    main()

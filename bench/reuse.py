"""Pretrain once, reuse at a small site (issue 14): a foreign model against the site's own, at 1%, 10%, 100% labels.

    python bench/reuse.py [--foreign eunomia] [--site synthea_1k] [--epochs 10] [--continue-epochs 5]

1. The foreign site: every event of the Eunomia CDM (2,694 persons; no person of the small site), pretrained with
   the source vocabulary (SNOMED / RxNorm / CVX / LOINC codes: both data sets come from Synthea, so they share a
   vocabulary the way two OMOP sites share standard concepts).
2. The small site: the Synthea 1k CDM and its benchmark suite (omop_behrt/suites/synthea_1k.yaml, 1,092 index
   rows). Three encoders, all through the product's API (`benchmark.pretrain_local` = what `omop-behrt benchmark`
   does, `pretrain(init=...)` = `pretrain --init`):
   - local: pretrained on the site's events before the index dates only;
   - foreign: the Eunomia model as shipped (unknown codes fall back to a known ancestor; coverage reported);
   - foreign + continued: the Eunomia model pretrained further on the site's censored events, vocabulary
     extended with the site's frequent codes.
3. One `run_benchmark` over the three: counts (LR, GBM), each encoder + LR, encoder ⊕ counts, each encoder
   fine-tuned (finetuned-pretrained), few-shot at 1%, 10%, 100% of the training labels; macro AUROC per fraction.

Prints the tables and writes bench/out/reuse.json (aggregates only) and, without curves, bench/results/reuse.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--foreign", default="eunomia")
    ap.add_argument("--site", default="synthea_1k")
    ap.add_argument("--config", default="tiny-256", help="a bench/benchmark.py candidate name")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--continue-epochs", type=int, default=5)
    ap.add_argument("--few-shot", default="0.01,0.1,1")
    ap.add_argument("--finetune", action="store_true", help="also fine-tune each encoder (minutes per task)")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from benchmark import CANDIDATES, compact, source_events
    from omop_behrt.evaluation.benchmark import pretrain_local, results_table, run_benchmark
    from omop_behrt.events import EventDir
    from omop_behrt.behrt.pretrain import pretrain
    from omop_behrt.tasks.suite import Suite, build
    work = ROOT / "bench" / "out" / "reuse"
    work.mkdir(parents=True, exist_ok=True)
    opts, pooling = CANDIDATES[args.config]
    seconds = {}
    foreign_events = EventDir.open(source_events(args.foreign, None, work))
    foreign = work / f"foreign-{args.foreign}-{args.config}-{args.epochs}"
    if not (foreign / "model.safetensors").exists():
        t = time.perf_counter()
        pretrain(foreign_events, "source", foreign, opts["config"], epochs=args.epochs, device="cpu",
                 progress=False, work_dir=work / f"{foreign.name}.work")
        seconds["pretrain foreign"] = round(time.perf_counter() - t, 1)
    site = EventDir.open(source_events(args.site, None, work))
    built = build(site, Suite.load(args.site))
    t = time.perf_counter()
    local = pretrain_local(site, built, work, {**opts, "epochs": args.epochs, "device": "cpu"})
    seconds["pretrain local"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    continued = pretrain_local(site, built, work, {"init": foreign, "epochs": args.continue_epochs, "device": "cpu"})
    seconds["continue foreign"] = round(time.perf_counter() - t, 1)
    methods = ["counts-lr", "counts-gbm", "embeddings-lr", "embeddings-counts"]
    if args.finetune:
        methods.append("finetuned-pretrained")
    fractions = [float(f) for f in args.few_shot.split(",") if f.strip()]
    t = time.perf_counter()
    out = run_benchmark(site, built.suite, work / "run", models={"local": local, "foreign": foreign,
                                                                 "foreign+continued": continued},
                        methods=methods, few_shot_fractions=fractions, pooling=pooling, n_boot=args.bootstrap,
                        progress=False)
    seconds["benchmark"] = round(time.perf_counter() - t, 1)
    print(results_table(out))
    print("\nfew-shot macro AUROC (mean over tasks):")
    for row in out["few_shot_macro"]:
        print(f"  {row['method']:<40} {row['fraction'] * 100:>5g}%  {row['auroc']:.3f}  ({row['tasks']} tasks)")
    for name, m in out["models"].items():
        cov = m.get("coverage") or {}
        print(f"{name}: coverage in model {cov.get('share_in_model')}, via fallback {cov.get('share_fallback')}, "
              f"[UNK] {cov.get('share_unknown')}")
    res = {"foreign": args.foreign, "site": args.site, "config": args.config, "epochs": args.epochs,
           "continue_epochs": args.continue_epochs, "seconds": seconds,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
           **{k: out[k] for k in ("macro", "few_shot_macro", "models", "counts", "problems")},
           "tasks": {t: v["methods"] for t, v in out["tasks"].items()}}
    path = ROOT / "bench" / "out" / "reuse.json"
    path.write_text(json.dumps(res, indent=1, default=str))
    kept = ROOT / "bench" / "results" / "reuse.json"            # the figures RESULTS.md quotes, in the repository
    kept.parent.mkdir(exist_ok=True)
    kept.write_text(json.dumps(compact(res), indent=1, default=str))
    print(f"wrote {path} and {kept}")


if __name__ == "__main__":
    main()

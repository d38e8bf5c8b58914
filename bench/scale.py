"""Benchmark pretraining and embedding at scale: memory flat in the number of persons, 1 vs 2 processes.

The in-repo Synthea 1k OMOP subset (101 persons, ~260 events each) is replicated to each size into a DuckDB CDM
(bench/extract.py's build_cdm) and extracted to an event directory. Then, each in its own process (peak RSS is
that process's own ``ru_maxrss``; under torchrun each rank reports its own):
  * tokenise : `pretrain` up to its first step: the streaming corpus (chunks of persons -> npz shards)
Peak RSS is /proc/self/status VmHWM (ru_maxrss would carry the forking parent's high-water mark across exec);
it counts the mapped shard pages a run touched (page cache: clean, shared by the ranks, reclaimable), so the
record also gives anonymous vs file-backed resident memory at exit.
  * train    : `pretrain --resume` for --steps steps from the memory-mapped shards, 1 process, 1 thread
  * train x2 : the same steps under torchrun (gloo, 2 processes, 1 thread each) on the same shards
  * baseline : the in-memory path in the same run (the whole token table mapped in memory, one tokenize query,
               training from arrays loaded whole), at the sizes given by --baseline-sizes
  * embed    : embed_cohort of --embed-persons persons (index date 2019-01-01), 1 process vs 2 concurrent
               processes `shard 0/2` and `1/2` (1 thread each), tiny model with random weights (speed does
               not depend on training)
Prints a table and writes bench/results/scale.json.

    python bench/scale.py --sizes 100000,300000 --baseline-sizes 100000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

STOP_FIRST = 1              # the tokenise run stops after this step (with a checkpoint to resume)
TOTAL = 100_000             # schedule length: never reached, so no final evaluation over the val persons


# -- children ---------------------------------------------------------------------------------------
def _memory() -> dict:
    """This process's peak RSS (VmHWM) and, at exit, its anonymous memory vs mapped file pages (page cache).

    Not ``ru_maxrss``: Linux carries the forking parent's high-water mark across exec into it."""
    kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in
                                            Path("/proc/self/status").read_text().splitlines())
          if k in ("VmHWM", "RssAnon", "RssFile")}
    return {"peak_rss_mb": round(kb["VmHWM"] / 1024), "rss_anon_mb_at_exit": round(kb["RssAnon"] / 1024),
            "rss_file_mb_at_exit": round(kb["RssFile"] / 1024),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _report(path: str, record: dict) -> None:
    """Write this process's record (its own memory figures) to ``<path>.<rank>.json``."""
    rank = int(os.environ.get("RANK", 0))
    record |= {"rank": rank} | _memory()
    Path(f"{path}.{rank}.json").write_text(json.dumps(record, default=str))


def _in_memory_prepare(events, vocab, data: Path, config, *, min_count, val_fraction, seed, age_unit,
                       init_vocab=None, **_):
    """The in-memory path (before streaming): one token table, one tokenize, arrays saved whole."""
    import numpy as np
    import pyarrow as pa
    from omop_behrt.behrt.corpus import token_table, validation_mask
    from omop_behrt.behrt.tokenizer import TokenVocabulary, tokenize, visit_table
    tokens, _ = token_table(events, vocab)
    is_val = validation_mask(tokens.column("subject_id").to_numpy(), val_fraction, seed)
    tv = TokenVocabulary.build(tokens.filter(pa.array(~is_val)), min_count=min_count, time_tokens=config.time_tokens)
    seqs = tokenize(tokens, events.persons(), tv, max_len=config.max_len, age_unit=age_unit,
                    visits=visit_table(events), time_tokens=config.time_tokens)
    val = validation_mask(seqs.subject_id, val_fraction, seed)
    seqs.select(np.flatnonzero(~val)).save(data / "train")
    seqs.select(np.flatnonzero(val)).save(data / "val")
    tv.save(data / "tokens.json")
    summary = {"train_persons": int((~val).sum()), "train_tokens": int(seqs.lengths[~val].sum())}
    (data / "summary.json").write_text(json.dumps(summary))
    return tv, summary


def _reuse_prepare(events, vocab, data: Path, config, **_):
    """The corpus another run tokenised (hard-linked into ``data`` beforehand): read, not redone."""
    from omop_behrt.behrt.tokenizer import TokenVocabulary
    return TokenVocabulary.load(data / "tokens.json"), json.loads((data / "summary.json").read_text())


def child_pretrain(a: dict) -> None:
    """One pretrain call as the bench asks (``a``: its settings and which data path)."""
    import torch
    from omop_behrt.behrt import pretrain as p
    from omop_behrt.behrt.tokenizer import Sequences
    torch.set_num_threads(1)
    if a.get("in_memory"):
        p.prepare = _in_memory_prepare
        p.MappedSequences = Sequences.load
    if a.get("reuse"):
        p.prepare = _reuse_prepare
    t0 = time.perf_counter()
    res = p.pretrain(a["events"], "source", a["out"], "tiny", max_steps=TOTAL, stop_after=a["stop_after"],
                     resume=a.get("resume", False), work_dir=a["work"], device="cpu", threads=1, progress=False,
                     log_every=a.get("log_every", 10), checkpoint_every=10**9, batch_tokens=4096)
    _report(a["report"], {"seconds": time.perf_counter() - t0, "step": res["step"]})


def child_embed(a: dict) -> None:
    """embed_cohort of the bench's cohort (one shard of it, or all)."""
    import pyarrow.parquet as pq
    import torch
    from omop_behrt.vectors.embed import embed_cohort
    torch.set_num_threads(1)
    index = pq.read_table(a["index"])
    t0 = time.perf_counter()
    res = embed_cohort(a["model"], a["events"], index, device="cpu", work_dir=a["work"], progress=False,
                       shard=a.get("shard"), exact=a.get("exact"))
    _report(a["report"], {"seconds": time.perf_counter() - t0, "rows": int(res.index.num_rows),
                          "embedded": int(res.has_history.sum())})


# -- parent -----------------------------------------------------------------------------------------
def _run(kind: str, args: dict, report: Path, torchrun: int = 0, env: dict | None = None) -> list[dict]:
    """Run a child (or torchrun of ``torchrun`` children) and read back each process's record."""
    for old in report.parent.glob(report.name + ".*.json"):
        old.unlink()
    args = dict(args, report=str(report))
    cmd = [sys.executable, __file__, "--child", kind, json.dumps(args)]
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(torchrun),
               "--master-addr", "127.0.0.1", "--master-port", str(port), __file__, "--child", kind, json.dumps(args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **(env or {}))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{kind} child failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    return [json.loads(f.read_text()) for f in sorted(report.parent.glob(report.name + ".*.json"))]


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of ``src`` made of hard links (the shards are read-only afterwards)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=os.link)


def _tokens_per_s(work: Path, after_step: int) -> float:
    """Median tokens/s of the log windows after ``after_step`` (rank 0's, already x world size)."""
    import numpy as np
    rows = [json.loads(r) for r in (work / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > after_step]
    return float(np.median(rates)) if rates else float("nan")


def _rate(x: float) -> int | None:
    """A tokens/s figure for the JSON: None when no log window fell inside the timed steps (too few --steps)."""
    return None if x != x else round(x)


def _split(record: dict) -> dict:
    """A child's resident memory at exit: anonymous (its own) and mapped file pages (page cache), when known."""
    return {k: record[k] for k in ("rss_anon_mb_at_exit", "rss_file_mb_at_exit") if k in record}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cohort(events: Path, persons: int, path: Path) -> int:
    """The first ``persons`` persons of the event directory, index date 2019-01-01."""
    import duckdb
    con = duckdb.connect()
    n = con.execute(f"""COPY (SELECT 1::BIGINT AS cohort_definition_id, subject_id,
                              TIMESTAMP '2019-01-01' AS index_date
                              FROM read_parquet('{events}/persons.parquet') ORDER BY subject_id LIMIT {int(persons)})
                        TO '{path}' (FORMAT parquet)""").fetchall()[0][0]
    con.close()
    return int(n)


def _random_model(work: Path, out: Path) -> None:
    """A tiny BEHRT with random weights and the corpus's vocabulary (embedding speed does not depend on training)."""
    import torch
    from omop_behrt.behrt.model import Behrt, BehrtConfig
    from omop_behrt.behrt.tokenizer import TokenVocabulary
    tv = TokenVocabulary.load(work / "data" / "tokens.json")
    cfg = BehrtConfig.preset("tiny")
    cfg.vocab_size = len(tv)
    torch.manual_seed(0)
    Behrt(cfg).save(out, tv, {"vocab": "source", "vocab_sha256": tv.sha256})


def bench_size(n: int, root: Path, steps: int, baseline: bool, embed_persons: int, source: Path) -> dict:
    """One size: build and extract (cached in ``root``), tokenise, train x1 and x2, baseline, embed x1 and x2."""
    d = root / f"p{n}"
    d.mkdir(parents=True, exist_ok=True)
    rec: dict = {"persons": n}
    cdm, events = d / "cdm.duckdb", d / "events"
    if not (events / "manifest.json").exists():
        t = time.perf_counter()
        cdm.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-c", "import sys, json; sys.path.insert(0, sys.argv[4]); "
                        "from extract import build_cdm; from pathlib import Path; "
                        "print(json.dumps(build_cdm(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))))",
                        str(source), str(n), str(cdm), str(ROOT / "bench")], check=True)
        subprocess.run([sys.executable, "-c", "import sys; from omop_behrt.adapters import omop; "
                        "omop.extract(sys.argv[1], sys.argv[2], progress=False)", str(cdm), str(events)], check=True)
        rec["build_extract_s"] = round(time.perf_counter() - t, 1)
        cdm.unlink()
    work, out = d / "stream.work", d / "stream"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    base = {"events": str(events), "out": str(out), "work": str(work)}
    print(f"[{n:,}] tokenise (streaming) ...", flush=True)
    rec["load_before"] = _load()
    [tok] = _run("pretrain", base | {"stop_after": STOP_FIRST}, d / "tok")
    summary = json.loads((work / "data" / "summary.json").read_text())
    shards = len(list((work / "data" / "train").glob("part-*.npz")))
    rec["corpus"] = {k: summary[k] for k in ("train_persons", "val_persons", "train_tokens", "token_rows")} | {
        "train_shards": shards}
    rec["tokenise"] = {"seconds": round(tok["seconds"], 1), "peak_rss_mb": round(tok["peak_rss_mb"]),
                       **_split(tok)}
    print(f"[{n:,}] train 1 process ...", flush=True)
    [tr] = _run("pretrain", base | {"stop_after": STOP_FIRST + steps, "resume": True, "log_every": 5}, d / "tr1")
    rec["train_1"] = {"tokens_per_s": _rate(_tokens_per_s(work, STOP_FIRST + 5)), "seconds": round(tr["seconds"], 1),
                      "peak_rss_mb": round(tr["peak_rss_mb"]), **_split(tr)}
    print(f"[{n:,}] train 2 processes (torchrun, gloo) ...", flush=True)
    work2 = d / "ddp.work"
    shutil.rmtree(work2, ignore_errors=True)
    (work2 / "data").parent.mkdir(parents=True)
    _link_tree(work / "data", work2 / "data")
    ranks = _run("pretrain", {"events": str(events), "out": str(d / "ddp"), "work": str(work2), "reuse": True,
                              "stop_after": steps, "log_every": 5}, d / "tr2", torchrun=2)
    rec["train_2"] = {"tokens_per_s": _rate(_tokens_per_s(work2, 5)),
                      "seconds": round(max(r["seconds"] for r in ranks), 1),
                      "peak_rss_mb_per_rank": [round(r["peak_rss_mb"]) for r in ranks]}
    rec["train_2"]["speedup"] = round(rec["train_2"]["tokens_per_s"] / rec["train_1"]["tokens_per_s"], 2)
    if baseline:
        print(f"[{n:,}] baseline (in memory) ...", flush=True)
        bwork, bout = d / "mem.work", d / "mem"
        shutil.rmtree(bwork, ignore_errors=True)
        [btok] = _run("pretrain", {"events": str(events), "out": str(bout), "work": str(bwork), "in_memory": True,
                                   "stop_after": STOP_FIRST}, d / "btok")
        [btr] = _run("pretrain", {"events": str(events), "out": str(bout), "work": str(bwork), "in_memory": True,
                                  "stop_after": STOP_FIRST + steps, "resume": True, "log_every": 5}, d / "btr")
        rec["baseline"] = {"tokenise_seconds": round(btok["seconds"], 1),
                           "tokenise_peak_rss_mb": round(btok["peak_rss_mb"]),
                           "train_tokens_per_s": _rate(_tokens_per_s(bwork, STOP_FIRST + 5)),
                           "train_peak_rss_mb": round(btr["peak_rss_mb"])}
        shutil.rmtree(bwork, ignore_errors=True)
    if embed_persons:
        print(f"[{n:,}] embed 1 vs 2 processes ...", flush=True)
        model, index = d / "model", d / "index.parquet"
        shutil.rmtree(model, ignore_errors=True)
        _random_model(work, model)
        rows = _cohort(events, embed_persons, index)
        e = {"events": str(events), "model": str(model), "index": str(index)}
        shutil.rmtree(d / "emb", ignore_errors=True)
        [one] = _run("embed", e | {"work": str(d / "emb" / "all")}, d / "e1")
        [one_exact] = _run("embed", e | {"work": str(d / "emb" / "exact"), "exact": True}, d / "e1x")
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--child", "embed", json.dumps(
            e | {"work": str(d / "emb" / f"s{i}"), "shard": f"{i}/2", "report": str(d / f"e2s{i}")})],
            env=dict(os.environ, OMP_NUM_THREADS="1")) for i in (0, 1)]
        if any(p.wait() for p in procs):
            raise RuntimeError("an embed shard failed")
        wall2 = time.perf_counter() - t
        two = [json.loads(Path(f"{d / f'e2s{i}'}.0.json").read_text()) for i in (0, 1)]
        rec["embed"] = {"rows": rows, "one": {"seconds": round(one["seconds"], 1),
                                              "patients_per_s": round(rows / one["seconds"], 1),
                                              "peak_rss_mb": one["peak_rss_mb"]},
                        "two": {"wall_seconds": round(wall2, 1), "patients_per_s": round(rows / wall2, 1),
                                "shard_rows": [s["rows"] for s in two],
                                "peak_rss_mb_per_process": [s["peak_rss_mb"] for s in two]}}
        rec["embed"]["speedup"] = round(one["seconds"] / wall2, 2)
        # like for like: each process's own embed_cohort time (no interpreter start or imports, as for "one"),
        # against the single run in length-bucketed batches and against a single --exact run (what shards use)
        inner = max(s["seconds"] for s in two)
        rec["embed"]["two"]["slowest_shard_seconds"] = round(inner, 1)
        rec["embed"]["one_exact"] = {"seconds": round(one_exact["seconds"], 1),
                                     "patients_per_s": round(rows / one_exact["seconds"], 1)}
        rec["embed"]["speedup_inner"] = round(one["seconds"] / inner, 2)
        rec["embed"]["speedup_inner_vs_exact"] = round(one_exact["seconds"] / inner, 2)
        shutil.rmtree(d / "emb", ignore_errors=True)
    rec["load_after"] = _load()
    return rec


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        {"pretrain": child_pretrain, "embed": child_embed}[sys.argv[2]](json.loads(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000")
    ap.add_argument("--baseline-sizes", default="100000", help="sizes that also run the in-memory path")
    ap.add_argument("--steps", type=int, default=30, help="training steps timed (4096-token batches, tiny)")
    ap.add_argument("--embed-persons", type=int, default=10_000)
    ap.add_argument("--embed-sizes", default="100000", help="sizes that also time embedding")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "scale")
    ap.add_argument("--source", type=Path, default=ROOT / "tests" / "data" / "synthea_omop_1k")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    with_base = {int(s) for s in a.baseline_sizes.split(",") if s}
    out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                       "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
           "command": " ".join(sys.argv), "steps": a.steps, "config": "tiny", "batch_tokens": 4096, "sizes": []}
    for n in sizes:
        embed = a.embed_persons if n in {int(s) for s in a.embed_sizes.split(",") if s} else 0
        out["sizes"].append(bench_size(n, a.workdir, a.steps, n in with_base, embed, a.source))
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))
    print(f"\n{'persons':>9} {'tok s':>7} {'tok RSS':>8} {'train tok/s':>11} {'RSS':>6} {'x2 tok/s':>9} {'x2':>5} "
          f"{'x2 RSS/rank':>12} {'embed p/s':>9} {'x2 p/s':>8} {'x2':>5} {'load':>15}")
    for r in out["sizes"]:
        e = r.get("embed", {})
        print(f"{r['persons']:>9,} {r['tokenise']['seconds']:>7} {r['tokenise']['peak_rss_mb']:>6}MB "
              f"{r['train_1']['tokens_per_s']:>11,} {r['train_1']['peak_rss_mb']:>4}MB "
              f"{r['train_2']['tokens_per_s']:>9,} {r['train_2']['speedup']:>5} "
              f"{'/'.join(map(str, r['train_2']['peak_rss_mb_per_rank'])):>10}MB "
              f"{e.get('one', {}).get('patients_per_s', '-'):>9} {e.get('two', {}).get('patients_per_s', '-'):>8} "
              f"{e.get('speedup', '-'):>5} {str(r['load_before']):>15}")
        if "baseline" in r:
            b = r["baseline"]
            print(f"{'in memory':>9} {b['tokenise_seconds']:>7} {b['tokenise_peak_rss_mb']:>6}MB "
                  f"{b['train_tokens_per_s']:>11,} {b['train_peak_rss_mb']:>4}MB")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

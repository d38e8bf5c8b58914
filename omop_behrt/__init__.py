"""omop-behrt: BEHRT-style transformer patient embeddings from OMOP CDM and FHIR data."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("omop-behrt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from pathlib import Path as _Path

# A source checkout keeps adapters/, sql/ and vocab_maps/ beside this folder (the wheel maps them inside it):
# run from the repository root, Python finds this folder before any installed wheel, so look there too.
_here = _Path(__file__).resolve().parent
if not (_here / "adapters").is_dir() and (_here.parent / "adapters" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

from .database import Database, SourceError
from .events import (EVENTS_SCHEMA, NOTES_SCHEMA, OBSERVATION_PERIODS_SCHEMA, PERSONS_SCHEMA, EventDir, EventSchemaError,
                     validate_events, validate_persons)
from .adapters import ExtractOptions, extract, from_meds, to_meds
from . import cohorts
from .export import write_embeddings

_LAZY = {"PatientEmbedder": "embed", "embed_cohort": "embed"}   # these import torch: only when asked for


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'omop_behrt' has no attribute {name!r}")

__all__ = ["__version__", "Database", "SourceError", "EventDir", "EventSchemaError", "EVENTS_SCHEMA",
           "PERSONS_SCHEMA", "OBSERVATION_PERIODS_SCHEMA", "NOTES_SCHEMA", "validate_events", "validate_persons",
           "extract", "ExtractOptions", "to_meds", "from_meds", "cohorts", "PatientEmbedder", "embed_cohort",
           "write_embeddings"]

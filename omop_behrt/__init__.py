"""omop-behrt: BEHRT-style transformer patient embeddings from OMOP CDM and FHIR data.

The public names below import on first use (PEP 562), so that ``import omop_behrt.cli.main`` and ``omop-behrt --help``
load no pyarrow, pandas, torch or scikit-learn: ``from omop_behrt import PatientEmbedder`` works as before.
"""
from pathlib import Path as _Path

# A source checkout keeps adapters/, sql/ and vocab_maps/ beside this folder (the wheel maps them inside it):
# run from the repository root, Python finds this folder before any installed wheel, so look there too.
_here = _Path(__file__).resolve().parent
if not (_here / "adapters").is_dir() and (_here.parent / "adapters" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

# public name -> the submodule defining it (a name equal to its module's, like cohorts, is the submodule itself)
_LAZY = {"Database": "db.database", "SourceError": "db.database",
         "EventDir": "events", "EventSchemaError": "events", "EVENTS_SCHEMA": "events", "NOTES_SCHEMA": "events",
         "OBSERVATION_PERIODS_SCHEMA": "events", "PERSONS_SCHEMA": "events", "validate_events": "events",
         "validate_persons": "events",
         "ExtractOptions": "adapters", "extract": "adapters", "from_meds": "adapters", "to_meds": "adapters",
         "cohorts": "tasks.cohorts", "write_embeddings": "vectors.export",
         "PatientEmbedder": "vectors.embedder", "embed_cohort": "vectors.embed"}

__all__ = ["__version__", "Database", "SourceError", "EventDir", "EventSchemaError", "EVENTS_SCHEMA",
           "PERSONS_SCHEMA", "OBSERVATION_PERIODS_SCHEMA", "NOTES_SCHEMA", "validate_events", "validate_persons",
           "extract", "ExtractOptions", "to_meds", "from_meds", "cohorts", "PatientEmbedder", "embed_cohort",
           "write_embeddings"]


def _package_version() -> str:
    """The installed distribution's version (importlib.metadata costs ~40 ms: read only when asked for)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("omop-behrt")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str):
    """Import a public name's submodule on first access and cache the name here (PEP 562)."""
    import importlib
    if name == "__version__":
        value = _package_version()
    elif name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = module if name == _LAZY[name].rsplit(".", 1)[-1] else getattr(module, name)
    else:
        raise AttributeError(f"module 'omop_behrt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names and the lazy public ones, for tab completion and dir()."""
    return sorted(set(globals()) | set(__all__))

"""omop-behrt: BEHRT-style transformer patient embeddings from OMOP CDM and FHIR data."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("omop-behrt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .database import Database, SourceError
from .events import (EVENTS_SCHEMA, OBSERVATION_PERIODS_SCHEMA, PERSONS_SCHEMA, EventDir, EventSchemaError,
                     validate_events, validate_persons)
from .adapters import ExtractOptions, extract, from_meds, to_meds

__all__ = ["__version__", "Database", "SourceError", "EventDir", "EventSchemaError", "EVENTS_SCHEMA",
           "PERSONS_SCHEMA", "OBSERVATION_PERIODS_SCHEMA", "validate_events", "validate_persons",
           "extract", "ExtractOptions", "to_meds", "from_meds"]

"""Source readers, importable as ``omop_behrt.adapters``: each turns one kind of source into an event directory.

The names load on first use (PEP 562), so reading an OMOP CDM does not import the FHIR adapter.
"""
from __future__ import annotations

import importlib

_MODULES = ("omop", "fhir", "meds")
_NAMES = {"extract": "omop", "ExtractOptions": "omop", "ExtractSummary": "omop", "to_meds": "meds",
          "from_meds": "meds"}

__all__ = [*_MODULES, *_NAMES]


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

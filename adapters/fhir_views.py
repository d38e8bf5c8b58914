"""The ViewDefinitions that turn FHIR resources into events: loaded and checked once per process, and each
resource type's views generated as one Python function (adapters/view_codegen.py) before the workers fork."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Callable

from omop_behrt.adapters.view_codegen import compile_views
from omop_behrt.adapters.viewdefinition import View, ViewError, load_views


#: Columns an event view may have; subject, time, domain and either coding or code are required. ``unit``: of
#: ``value``; ``quantity``: a Quantity giving both (where the view has no value / unit column); ``display``:
#: describes the code where the Coding has no display (or with system + code).
EVENT_COLUMNS = ("subject", "encounter", "time", "end_time", "coding", "system", "code", "value", "domain",
                 "source_coding", "source_system", "source_code", "unit", "display", "quantity")


def _event_columns(view: View) -> tuple:
    """Positions of :data:`EVENT_COLUMNS` in the view's rows (None where absent); checked and cached per view."""
    at = getattr(view, "_event_at", None)
    if at is None:
        names = view.column_names
        missing = [c for c in ("subject", "time", "domain") if c not in names]
        if missing or ("coding" not in names and "code" not in names):
            raise ViewError(f"{view.origin}: an event view needs columns subject, time, domain and coding (a "
                            f"Coding) or system + code; it may add encounter, end_time, value, unit, quantity, "
                            f"display, source_coding; "
                            f"its columns are {names}")
        at = tuple(names.index(c) if c in names else None for c in EVENT_COLUMNS)
        view._event_at = at
    return at


_VIEWS: dict[tuple, dict[str, View]] = {}
_COMBINED: dict[tuple, Callable] = {}


def _combined(views: list[View]) -> Callable[[dict], tuple]:
    """The views of one type as one generated function (once per process for the same compiled views)."""
    key = tuple(id(v) for v in views)
    hit = _COMBINED.get(key)
    if hit is None or hit.views != views:
        hit = _COMBINED[key] = compile_views(views, "type_" + re.sub(r"\W", "_", views[0].resource))
        hit.views = list(views)
    return hit


def load_fhir_views(views: str | Path | None = None) -> dict[str, View]:
    """The packaged views (``sql/fhir/*.json``), with those in ``views`` added or replacing them by name.

    Compiled once per process for the same files (path, size, mtime): every part of a run, and the workers
    forked after the run checked them, reuse the compiled views."""
    packaged = Path(str(resources.files("omop_behrt.sql") / "fhir"))
    folders = [packaged] + ([Path(views)] if views is not None else [])
    if not all(f.is_dir() for f in folders):
        return load_views(packaged, views)          # says which folder is missing
    key = tuple((str(f), st.st_size, st.st_mtime_ns) for d in folders for f in sorted(d.glob("*.json"))
                for st in [f.stat()]) + tuple(str(d) for d in folders)
    hit = _VIEWS.get(key)
    if hit is None:
        if len(_VIEWS) > 8:
            _VIEWS.clear()
        hit = _VIEWS[key] = load_views(packaged, views)
    return dict(hit)


def _event_views(views: dict[str, View]) -> dict[str, list[View]]:
    """The event views (all but ``patient``) by resource type."""
    by_type: dict[str, list[View]] = {}
    for v in views.values():
        if v.name != "patient":
            by_type.setdefault(v.resource, []).append(v)
    return by_type


def compile_parts(views_dir: str | Path | None) -> None:
    """Generate each type's view function in this process, before the workers fork, so that they inherit them
    instead of each compiling its own (the parts look them up by their views)."""
    for vs in _event_views(load_fhir_views(views_dir)).values():
        _combined(vs)

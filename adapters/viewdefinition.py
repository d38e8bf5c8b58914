"""SQL-on-FHIR v2 ViewDefinitions: validated, compiled once, then run per resource into rows.

A view is compiled into a tree of closures (``select`` / ``forEach`` / ``forEachOrNull`` / ``repeat`` /
``unionAll`` / ``column``) over compiled FHIRPath (adapters/fhirpath.py). :meth:`View.rows` returns the rows of one
resource as tuples in :attr:`View.columns` order, which the FHIR adapter turns into Arrow columns per batch.
Semantics follow the v2 spec and its conformance suite (tests/data/sql_on_fhir_v2): a select's rows are the
cross product of its own columns, its nested selects, then its unionAll; ``where`` keeps a resource only when
every path is true (empty is false, a non-boolean is an error).
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from omop_behrt.adapters.fhirpath import Compiler, FhirPathError
from omop_behrt.adapters.view_codegen import compile_views

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CONSTANT_KEYS = ("valueBase64Binary", "valueBoolean", "valueCanonical", "valueCode", "valueDate",
                  "valueDateTime", "valueDecimal", "valueId", "valueInstant", "valueInteger", "valueInteger64",
                  "valueOid", "valueString", "valuePositiveInt", "valueTime", "valueUnsignedInt", "valueUri",
                  "valueUrl", "valueUuid")

Rows = list[tuple]


class ViewError(ValueError):
    """A ViewDefinition is invalid, or produced something its definition forbids; the message says where."""


@dataclass(frozen=True)
class Column:
    """One output column of a view."""

    name: str
    path: str
    type: str | None = None
    collection: bool = False


class View:
    """A compiled ViewDefinition. ``View(definition_dict)`` validates and compiles; ``rows(resource)`` runs it."""

    def __init__(self, definition: dict, origin: str = "ViewDefinition", generated: bool = True):
        if not isinstance(definition, dict):
            raise ViewError(f"{origin}: a ViewDefinition must be a JSON object")
        self.definition, self.origin = definition, origin
        self.name: str = definition.get("name") or Path(origin).stem
        self.resource = definition.get("resource")
        where = f"{origin} ({self.name})"
        if not isinstance(self.resource, str) or not self.resource:
            raise ViewError(f"{where}: 'resource' (the FHIR resource type the view reads) is required")
        if not definition.get("select"):
            raise ViewError(f"{where}: 'select' must hold at least one select")
        self.compiler = Compiler(self._constants(definition.get("constant", []), where))
        self.columns: list[Column] = []
        try:
            self._run, cols = self._select({"select": definition["select"]}, where)
            self.columns = cols
            self._where = [self._compile(w.get("path"), f"{where} where") for w in definition.get("where", [])]
        except FhirPathError as e:
            raise ViewError(f"{where}: {e}") from None
        names = [c.name for c in self.columns]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ViewError(f"{where}: column names must be unique; repeated: {sorted(dup)}")
        self.column_names = names
        # the same view as one generated function (adapters/view_codegen.py), made on first use (extract runs
        # one function per resource type instead); the closures stay its fallback and reference
        self.generated = generated
        self._fn: Callable[[dict], tuple] | None = None

    # -- compile -------------------------------------------------------------------------------------
    @staticmethod
    def _constants(items: list, where: str) -> dict[str, Any]:
        out = {}
        for c in items:
            name = c.get("name")
            keys = [k for k in c if k.startswith("value")]
            if not isinstance(name, str) or not _NAME.match(name) or len(keys) != 1 or keys[0] not in _CONSTANT_KEYS:
                raise ViewError(f"{where}: constant {c!r} needs a name and exactly one value[x] of "
                                f"{', '.join(k[5:] for k in _CONSTANT_KEYS)}")
            out[name] = c[keys[0]]
        return out

    def _compile(self, path: Any, where: str) -> Callable:
        if not isinstance(path, str):
            raise ViewError(f"{where}: path must be a FHIRPath string, got {path!r}")
        return self.compiler.compile(path)

    def _select(self, sel: dict, where: str) -> tuple[Callable[[Any, dict], Rows], list[Column]]:
        """Compile one select node into ``f(element, env) -> rows`` and its columns in output order."""
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in sel]
        if len(iterators) > 1:
            raise ViewError(f"{where}: a select may have only one of forEach, forEachOrNull, repeat")
        cols = [Column(c.get("name"), c.get("path"), c.get("type"), bool(c.get("collection", False)))
                for c in sel.get("column", [])]
        for c in cols:
            if not isinstance(c.name, str) or not _NAME.match(c.name):
                raise ViewError(f"{where}: column name {c.name!r} must match {_NAME.pattern}")
        col_fns = [self._column(c, self._compile(c.path, f"{where} column {c.name}")) for c in cols]
        subs = [self._select(s, where) for s in sel.get("select", [])]
        unions = [self._select(s, where) for s in sel.get("unionAll", [])]
        union_cols: list[Column] = []
        if unions:
            first = [c.name for c in unions[0][1]]
            for _, ucols in unions[1:]:
                if [c.name for c in ucols] != first:
                    raise ViewError(f"{where}: unionAll branches must have the same columns in the same order; "
                                    f"got {first} and {[c.name for c in ucols]}")
            union_cols = unions[0][1]
        all_cols = cols + [c for _, sc in subs for c in sc] + union_cols
        width = len(all_cols)

        if not iterators and not unions and len(subs) + bool(col_fns) == 1:
            if subs:                    # a select holding one select: that select
                return subs[0][0], all_cols

            def columns_only(element: Any, env: dict) -> Rows:
                return [tuple([fn(element, env) for fn in col_fns])]
            return columns_only, all_cols

        def body(element: Any, env: dict) -> Rows:
            own = tuple([fn(element, env) for fn in col_fns])
            parts = [[own]] if col_fns else []
            for fn, _ in subs:
                parts.append(fn(element, env))
            if unions:
                parts.append([r for fn, _ in unions for r in fn(element, env)])
            if len(parts) == 1:
                return parts[0]
            return [sum(combo, ()) for combo in itertools.product(*parts)]

        if not iterators:
            return body, all_cols
        kind = iterators[0]
        if kind == "repeat":
            paths = sel["repeat"]
            if not isinstance(paths, list) or not paths:
                raise ViewError(f"{where}: repeat must be a list of FHIRPath expressions")
            fns = [self._compile(p, f"{where} repeat") for p in paths]

            def items(element, env):
                out: list = []

                def walk(node):
                    for fn in fns:
                        for child in fn([node], env):
                            out.append(child)
                            walk(child)
                walk(element)
                return out
        else:
            items_fn = self._compile(sel[kind], f"{where} {kind}")
            items = lambda element, env: items_fn([element], env)   # noqa: E731
        or_null = kind == "forEachOrNull"
        nulls = [(None,) * width]

        def iterate(element: Any, env: dict) -> Rows:
            rows: Rows = []
            found = items(element, env)
            for i, item in enumerate(found):
                rows.extend(body(item, {**env, "rowIndex": i}))
            if found or not or_null:
                return rows
            return body(None, {**env, "rowIndex": 0}) or nulls
        return iterate, all_cols

    def _column(self, col: Column, fn: Callable) -> Callable[[Any, dict], Any]:
        """``f(element, env) -> value``: the list for a collection column, else the one value or None."""
        if col.collection:
            return lambda element, env: list(fn([element], env))

        def value(element: Any, env: dict) -> Any:
            v = fn([element], env)
            if not v:
                return None
            if len(v) == 1:
                return v[0]
            res = env.get("resource")
            rid = res.get("id") if isinstance(res, dict) else None
            raise ViewError(f"view {self.name}: column {col.name!r} (path {col.path!r}) gave {len(v)} values for "
                            f"{self.resource}/{rid}; set collection: true or narrow the path (e.g. .first())")
        lit = self.compiler.literal(col.path)
        if lit is not None and len(lit) == 1:     # a constant column ('drug'): no call per row
            const = lit[0]
            return lambda element, env: const
        names = self.compiler.member_names(col.path)
        if names:      # plain path: walk the dicts directly, the general code only for lists / absent keys
            def direct(element: Any, env: dict) -> Any:
                cur = element
                for name in names:
                    if type(cur) is not dict:
                        return None
                    cur = cur.get(name)
                    if cur is None or type(cur) is list:
                        return value(element, env)
                return cur

            return direct
        return value

    # -- run -----------------------------------------------------------------------------------------
    def keeps(self, resource: dict, env: dict | None = None) -> bool:
        """Whether every ``where`` path is true for the resource (empty counts as false)."""
        env = env or {"resource": resource}
        for fn in self._where:
            v = fn([resource], env)
            if not v:
                return False
            if len(v) > 1 or not isinstance(v[0], bool):
                raise ViewError(f"view {self.name}: a where path must give a boolean; got {v[:3]!r} for "
                                f"{self.resource}/{resource.get('id')}")
            if not v[0]:
                return False
        return True

    def rows(self, resource: dict) -> Rows:
        """The view's rows for one resource (none when the type differs or a where path is not true)."""
        if resource.get("resourceType") != self.resource:
            return []
        if self.generated:
            return (self._fn or self._generate())(resource)[0]
        return self.closure_rows(resource)

    def _generate(self) -> Callable[[dict], tuple]:
        self._fn = compile_views([self], "view_" + re.sub(r"\W", "_", self.name))
        return self._fn

    def closure_rows(self, resource: dict) -> Rows:
        """:meth:`rows` through the closure tree (the generated function's reference and fallback)."""
        if resource.get("resourceType") != self.resource:
            return []
        env = {"resource": resource}
        if self._where and not self.keeps(resource, env):
            return []
        return self._run(resource, env)

    def run(self, resources: Iterable[dict]) -> list[dict]:
        """All rows over ``resources`` as dicts (for tests and small inputs)."""
        return [dict(zip(self.column_names, r)) for res in resources for r in self.rows(res)]


def load_views(*folders: Path | str | None) -> dict[str, View]:
    """Views from ``*.json`` files in the folders, later folders adding to or replacing (by name) earlier ones."""
    views: dict[str, View] = {}
    for folder in folders:
        if folder is None:
            continue
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"views folder {folder} does not exist (expected ViewDefinition *.json files)")
        for f in sorted(folder.glob("*.json")):
            try:
                definition = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ViewError(f"{f}: not valid JSON ({e})") from None
            if definition.get("resourceType", "ViewDefinition") != "ViewDefinition":
                continue
            view = View(definition, str(f))
            views[view.name] = view
    return views

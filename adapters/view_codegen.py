"""ViewDefinitions compiled to one generated Python function each (and one per resource type for its views).

The closure tree of adapters/viewdefinition.py costs a Python call per node per resource. Here the select tree
and the FHIRPath expressions the packaged views use (member chains, ``ofType`` on a member, literals, ``|``,
``where``, ``exists``, ``first``, ``and``/``or``, ``= 'text'``, ``not``, ``getResourceKey`` ...) are written out as
the source of one function, ``compile()``d once per process. Anything else (a node kind or function not generated,
``repeat``) calls the closure the view already compiled for it, so the two paths give the same rows and raise
the same errors in the same order. Views of one resource type are generated into one function whose top-level
expressions are evaluated once for all of them (the two Observation views' complementary ``where`` paths share
their operand).
"""
from __future__ import annotations

from typing import Any, Callable

from omop_behrt.adapters import fhirpath as fp

_M = fp._MISSING


def _member_slow(x: dict, name: str, root: bool) -> list:
    """A key absent from ``x``: the resource itself (``Patient.id``), else a choice element (``value[x]``)."""
    if root and x.get("resourceType") == name:
        return [x]
    if name not in fp.CHOICE_BASES:
        return []
    v = fp._choice(x, name)
    if v is _M or v is None:
        return []
    if type(v) is list:
        return [y for y in v if y is not None]
    return [v]


def _step(items: list, name: str, root: bool) -> list:
    """One member step over a collection of several items (the closure path's ``step``)."""
    out: list = []
    for it in items:
        if type(it) is not dict:
            continue
        v = it.get(name, _M)
        if v is _M:
            out.extend(_member_slow(it, name, root))
        elif type(v) is list:
            out.extend(y for y in v if y is not None)
        elif v is not None:
            out.append(v)
    return out


def _typed_slow(x: dict, name: str, t: str) -> list:
    """``name.ofType(t)`` when the key ``name`` + T is absent: ``name`` itself when of type ``t``."""
    v = x.get(name, _M)
    if v is _M or not all(fp._type_matches(y, t) for y in (v if type(v) is list else [v])):
        return []
    if type(v) is list:
        return [y for y in v if y is not None]
    return [] if v is None else [v]


def _union(a: list, b: list) -> list:
    out: list = []
    for v in a + b:
        if v not in out:
            out.append(v)
    return out


def _logic(op: str, x: bool | None, y: bool | None) -> list:
    if op == "and":
        r = False if y is False else (None if x is None or y is None else True)
    else:
        r = True if y is True else (None if x is None or y is None else False)
    return [] if r is None else [r]


def _resource_key(c: list) -> list:
    return [f"{v['resourceType']}/{v.get('id')}" for v in c if isinstance(v, dict)]


_HELPERS = {"_M": _M, "_member_slow": _member_slow, "_step": _step, "_typed_slow": _typed_slow, "_union": _union,
            "_logic": _logic, "_truth": fp._truth, "_compare": fp._compare, "_arith": fp._arith,
            "_resource_key": _resource_key}


class _Gen:
    """Writes the source of one function; ``ns`` collects the objects (closures, constants) it refers to."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 1
        self.n = 0
        self.ns: dict[str, Any] = dict(_HELPERS)
        self.memo: dict = {}
        self.view: Any = None
        self.row_index = "0"

    def var(self, prefix: str = "_v") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def obj(self, value: Any, prefix: str = "_k") -> str:
        name = self.var(prefix)
        self.ns[name] = value
        return name

    def block(self, head: str, body: Callable[[], Any]) -> Any:
        """``head:`` then ``body()`` indented, in a scope of its own (nothing it computes is reused outside)."""
        self.emit(head)
        self.depth += 1
        saved, self.memo = self.memo, dict(self.memo)
        try:
            n = len(self.lines)
            out = body()
            if len(self.lines) == n:
                self.emit("pass")
            return out
        finally:
            self.memo, self.depth = saved, self.depth - 1

    def env(self) -> str:
        return "env" if self.row_index == "0" else f"{{'resource': resource, 'rowIndex': {self.row_index}}}"

    # -- expressions: each gives the name of a variable holding the collection (a list) ----------------------
    def expr(self, node: tuple, focus: tuple[str, str]) -> str:
        key = (repr(node), focus, self.row_index, repr(sorted(self.view.compiler.constants.items())))
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self._expr(node, focus)
        return hit

    @staticmethod
    def as_list(focus: tuple[str, str]) -> str:
        return f"[{focus[1]}]" if focus[0] == "one" else focus[1]

    def fallback(self, node: tuple, focus: tuple[str, str]) -> str:
        fn = self.obj(self.view.compiler.node(node), "_f")
        r = self.var()
        self.emit(f"{r} = {fn}({self.as_list(focus)}, {self.env()})")
        return r

    def _expr(self, node: tuple, focus: tuple[str, str]) -> str:
        kind = node[0]
        if kind == "this":
            if focus[0] == "list":
                return focus[1]
            r = self.var()
            self.emit(f"{r} = [{focus[1]}]")
            return r
        if kind == "lit" or (kind == "ext" and node[1] not in ("rowIndex", "resource", "rootResource", "context")):
            const = self.obj(self.view.compiler.node(node)([], {}))
            return const                  # never mutated: generated code only appends to lists it made
        if kind == "ext":
            r = self.var()
            self.emit(f"{r} = [{self.row_index}]" if node[1] == "rowIndex" else f"{r} = [resource]")
            return r
        if kind == "member":
            return self.member(node, focus)
        if kind == "bin":
            return self.binary(node, focus)
        if kind == "call":
            return self.call(node, focus)
        return self.fallback(node, focus)

    def one_step(self, x: str, name: str, root: bool, r: str, typed: str | None = None, t: str = "") -> None:
        """``r`` = the member ``name`` (or the typed key ``typed``) of the one item ``x``."""
        key = typed or name

        def present():
            v = self.var()
            self.emit(f"{v} = {x}.get({key!r}, _M)")
            if typed:
                self.emit(f"if {v} is _M: {r} = _typed_slow({x}, {name!r}, {t!r})")
            elif root or name in fp.CHOICE_BASES:
                self.emit(f"if {v} is _M: {r} = _member_slow({x}, {name!r}, {root})")
            else:
                self.emit(f"if {v} is _M: {r} = []")
            self.emit(f"elif type({v}) is list: {r} = {v} if None not in {v} else [y for y in {v} if y is not None]")
            self.emit(f"elif {v} is None: {r} = []")
            self.emit(f"else: {r} = [{v}]")
        if x == "resource":               # the resource is a dict (the caller checked its resourceType)
            present()
            return
        self.block(f"if type({x}) is dict:", present)
        self.emit(f"else: {r} = []")

    def member(self, node: tuple, focus: tuple[str, str]) -> str:
        """One member step on its (memoised) base, so that ``code.coding`` and ``code.text`` share ``code``."""
        base, name = node[1], node[2]
        root = base == ("this",)
        cur = focus if root else ("list", self.expr(base, focus))
        return self.step(cur, name, root)

    def step(self, cur: tuple[str, str], name: str, root: bool, typed: str | None = None, t: str = "") -> str:
        r = self.var()
        if cur[0] == "one":
            self.one_step(cur[1], name, root, r, typed, t)
            return r
        x = self.var()

        def single():
            self.emit(f"{x} = {cur[1]}[0]")
            self.one_step(x, name, root, r, typed, t)
        self.block(f"if len({cur[1]}) == 1:", single)
        if typed:
            self.emit(f"else: {r} = _typed_many({cur[1]}, {name!r}, {typed!r}, {t!r})")
        else:
            self.emit(f"else: {r} = _step({cur[1]}, {name!r}, {root})")
        return r

    def binary(self, node: tuple, focus: tuple[str, str]) -> str:
        op, a_node, b_node = node[1], node[2], node[3]
        r = self.var()
        if op in ("and", "or", "implies"):
            decides = {"and": False, "or": True, "implies": False}[op]
            x = self.var()
            self.emit(f"{x} = {self.truth(a_node, self.expr(a_node, focus))}")
            self.emit(f"if {x} is {decides}: {r} = [{op != 'and'}]")

            def rest():
                y = self.var()
                self.emit(f"{y} = {self.truth(b_node, self.expr(b_node, focus))}")
                self.emit(f"{r} = _logic({'and' if op == 'and' else 'or'!r}, {x}, {y})")
            self.block("else:", rest)
            return r
        if op in ("=", "!=") and b_node[0] == "lit" and len(b_node[1]) == 1 and type(b_node[1][0]) is str:
            a = self.expr(a_node, focus)
            self.emit(f"{r} = [] if not {a} else [(len({a}) == 1 and {a}[0] == {b_node[1][0]!r}) is {op == '='}]")
            return r
        if op == "xor":
            return self.fallback(node, focus)
        a, b = self.expr(a_node, focus), self.expr(b_node, focus)
        if op == "|":
            self.emit(f"{r} = _union({a}, {b})")
        elif op in ("=", "!=", "~", "!~", "<", ">", "<=", ">="):
            self.emit(f"{r} = _compare({op!r}, {a}, {b})")
        elif op in ("+", "-", "*", "/", "div", "mod", "&"):
            self.emit(f"{r} = _arith({op!r}, {a}, {b})")
        else:
            return self.fallback(node, focus)
        return r

    @staticmethod
    def truth(node: tuple, var: str) -> str:
        """``_truth(var)`` inline where the node gives at most one boolean (exists, not, = 'text', and, or)."""
        if (node[0] == "call" and node[2] in ("exists", "empty", "not") and not node[3]) or \
                (node[0] == "bin" and node[1] in ("and", "or", "implies", "=", "!=")):
            return f"({var}[0] if {var} else None)"
        return f"_truth({var})"

    def operands(self, node: tuple) -> list[tuple]:
        if node[0] == "bin" and node[1] == "|":
            return self.operands(node[2]) + self.operands(node[3])
        return [node]

    def first_of(self, nodes: list[tuple], focus: tuple[str, str], r: str) -> None:
        """``r`` = the first item of the first non-empty operand; later operands only when needed."""
        c = self.expr(nodes[0], focus)
        if len(nodes) == 1:
            self.emit(f"{r} = {c}[:1]")
            return
        self.emit(f"if {c}: {r} = {c}[:1]")
        self.block("else:", lambda: self.first_of(nodes[1:], focus, r))

    def first_where(self, nodes: list[tuple], crit: tuple, focus: tuple[str, str], r: str, hit: str = "") -> None:
        """``r`` = the first item of the operands (in order) for which ``crit`` is true."""
        c = self.expr(nodes[0], focus)
        y = self.var("_y")

        def test():
            t = self.expr(crit, ("one", y))
            self.emit(f"if {self.truth(crit, t)}: {r} = [{hit or y}]; break")
        self.block(f"for {y} in {c}:", test)
        if len(nodes) > 1:
            self.block(f"if not {r}:", lambda: self.first_where(nodes[1:], crit, focus, r, hit))

    def call(self, node: tuple, focus: tuple[str, str]) -> str:
        base, name, args = node[1], node[2], node[3]
        r = self.var()
        if name == "ofType" and base[0] == "member" and len(args) == 1 and args[0][0] in ("type", "member"):
            t = (args[0][1] if args[0][0] == "type" else args[0][2]).split(".")[-1]
            inner = base[1]
            cur = focus if inner == ("this",) else ("list", self.expr(inner, focus))
            return self.step(cur, base[2], False, base[2] + t[0].upper() + t[1:], t)
        if name == "first" and not args and base[0] == "bin" and base[1] == "|":
            self.first_of(self.operands(base), focus, r)
            return r
        if name == "first" and not args and base[0] == "call" and base[2] == "where" and len(base[3]) == 1:
            self.emit(f"{r} = []")
            self.first_where(self.operands(base[1]), base[3][0], focus, r)
            return r
        if name == "exists" and not args and base[0] == "call" and base[2] == "where" and len(base[3]) == 1:
            self.emit(f"{r} = [False]")
            self.first_where([base[1]], base[3][0], focus, r, "True")
            return r
        if name == "where" and len(args) == 1:
            c = self.expr(base, focus)
            y = self.var("_y")
            self.emit(f"{r} = []")
            self.block(f"for {y} in {c}:",
                       lambda: self.emit(f"if {self.truth(args[0], self.expr(args[0], ('one', y)))}: {r}.append({y})"))
            return r
        simple = {"empty": "[not {c}]", "first": "{c}[:1]", "last": "{c}[-1:]", "count": "[len({c})]",
                  "exists": "[bool({c})]", "getResourceKey": "_resource_key({c})"}
        if name in simple and not args:
            c = self.expr(base, focus)
            self.emit(f"{r} = " + simple[name].format(c=c))
            return r
        if name == "not" and not args:
            c = self.expr(base, focus)
            t = self.var()
            self.emit(f"{t} = {self.truth(base, c)}")
            self.emit(f"{r} = [] if {t} is None else [not {t}]")
            return r
        return self.fallback(node, focus)


def _typed_many(items: list, name: str, key: str, t: str) -> list:
    """``name.ofType(t)`` over several items (the closure path's ``typed``)."""
    out: list = []
    for it in items:
        if type(it) is not dict:
            continue
        v = it.get(key, _M)
        if v is _M:
            out.extend(_typed_slow(it, name, t))
        elif type(v) is list:
            out.extend(y for y in v if y is not None)
        elif v is not None:
            out.append(v)
    return out


def _too_many(view: Any, col: Any, resource: Any, n: int) -> None:
    from omop_behrt.adapters.viewdefinition import ViewError
    rid = resource.get("id") if isinstance(resource, dict) else None
    raise ViewError(f"view {view.name}: column {col.name!r} (path {col.path!r}) gave {n} values for "
                    f"{view.resource}/{rid}; set collection: true or narrow the path (e.g. .first())")


def _where_error(view: Any, v: list, resource: dict) -> None:
    from omop_behrt.adapters.viewdefinition import ViewError
    raise ViewError(f"view {view.name}: a where path must give a boolean; got {v[:3]!r} for "
                    f"{view.resource}/{resource.get('id')}")


class _ViewGen(_Gen):
    """Adds the select tree and the ``where`` of views to the expression generator."""

    def parse(self, path: str) -> tuple:
        return fp.Parser(path).parse()

    def column(self, col: Any, element: str) -> str:
        c = self.expr(self.parse(col.path), ("one", element))
        v = self.var("_c")
        if col.collection:
            self.emit(f"{v} = list({c})")
            return v
        self.emit(f"if len({c}) == 1: {v} = {c}[0]")
        self.emit(f"elif not {c}: {v} = None")
        self.emit(f"else: _too_many({self.obj(self.view, '_view')}, {self.obj(col, '_col')}, resource, len({c}))")
        return v

    def select(self, sel: dict, element: str) -> tuple[str, Any]:
        """Statements for one select node; ("row", [column vars]) for exactly one row, else ("rows", list var)."""
        kind = next((k for k in ("forEach", "forEachOrNull", "repeat") if k in sel), None)
        if kind == "repeat":
            fn, _ = self.view._select(sel, self.view.name)
            r = self.var("_r")
            self.emit(f"{r} = {self.obj(fn, '_s')}({element}, {self.env()})")
            return "rows", r
        if kind is None:
            return self.body(sel, element)
        items = self.expr(self.parse(sel[kind]), ("one", element))
        r, x, i = self.var("_r"), self.var("_x"), self.var("_i")
        self.emit(f"{r} = []")
        saved = self.row_index

        def each():
            self.row_index = i
            self.add(r, self.body(sel, x))
        self.block(f"for {i}, {x} in enumerate({items}):", each)
        if kind == "forEachOrNull":
            def none():
                self.row_index = "0"
                self.emit(f"{x} = None")
                got = self.body(sel, x)
                if got[0] == "row":
                    self.emit(f"{r} = [({''.join(c + ', ' for c in got[1])})]")
                else:
                    width = len(self.view._select(sel, self.view.name)[1])
                    self.emit(f"{r} = {got[1]} or [{(None,) * width!r}]")
            self.block(f"if not {items}:", none)
        self.row_index = saved
        return "rows", r

    def add(self, r: str, got: tuple[str, Any]) -> None:
        if got[0] == "row":
            self.emit(f"{r}.append(({''.join(c + ', ' for c in got[1])}))")
        else:
            self.emit(f"{r}.extend({got[1]})")

    def body(self, sel: dict, element: str) -> tuple[str, Any]:
        """Own columns x nested selects x unionAll, as the closure path's ``body`` (itertools.product order)."""
        from omop_behrt.adapters.viewdefinition import Column
        cols = [Column(c.get("name"), c.get("path"), c.get("type"), bool(c.get("collection", False)))
                for c in sel.get("column", [])]
        parts: list[tuple[str, Any]] = []
        if cols:
            parts.append(("row", [self.column(c, element) for c in cols]))
        for s in sel.get("select", []):
            parts.append(self.select(s, element))
        if sel.get("unionAll"):
            u = self.var("_r")
            self.emit(f"{u} = []")
            for s in sel["unionAll"]:
                self.add(u, self.select(s, element))
            parts.append(("rows", u))
        if not parts:
            return "row", []
        if all(p[0] == "row" for p in parts):
            return "row", [c for p in parts for c in p[1]]
        if len(parts) == 1:
            return parts[0]
        pieces, loops = [], []
        for kind, val in parts:
            if kind == "row":
                pieces.append(f"({''.join(c + ', ' for c in val)})")
            else:
                t = self.var("_t")
                pieces.append(t)
                loops.append(f"for {t} in {val}")
        r = self.var("_r")
        self.emit(f"{r} = [{' + '.join(pieces)} {' '.join(loops)}]")
        return "rows", r

    def view_rows(self, view: Any, out: str) -> None:
        """``out`` = the rows of ``view`` for ``resource`` (its where paths first, as View.keeps)."""
        self.view = view
        self.emit(f"{out} = []")
        wheres = [self.parse(w["path"]) for w in view.definition.get("where", [])]
        vobj = self.obj(view, "_view")

        def rows():
            got = self.select({"select": view.definition["select"]}, "resource")
            if got[0] == "row":
                self.emit(f"{out} = [({''.join(c + ', ' for c in got[1])})]")
            else:
                self.emit(f"{out} = {got[1]}")

        def check(k: int):
            if k == len(wheres):
                rows()
                return
            w = self.expr(wheres[k], ("one", "resource"))
            self.emit(f"if {w} and (len({w}) > 1 or not isinstance({w}[0], bool)): _where_error({vobj}, {w}, resource)")
            self.block(f"if {w} and {w}[0]:", lambda: check(k + 1))
        if wheres:
            check(0)
        else:
            rows()


def compile_views(views: list, name: str = "rows") -> Callable[[dict], tuple]:
    """One function ``f(resource) -> (rows of views[0], rows of views[1], ...)`` for views of one resource type
    (the caller checks the type); expressions at the top level are evaluated once for all the views."""
    g = _ViewGen()
    g.ns.update(_too_many=_too_many, _where_error=_where_error, _typed_many=_typed_many)
    outs = [g.var("_out") for _ in views]
    for view, out in zip(views, outs):
        g.view_rows(view, out)
    g.emit(f"return ({''.join(o + ', ' for o in outs)})")
    src = f"def {name}(resource):\n    env = {{'resource': resource}}\n" + "\n".join(g.lines) + "\n"
    code = compile(src, f"<view {name}>", "exec")
    ns = dict(g.ns)
    exec(code, ns)
    fn = ns[name]
    fn.source = src
    return fn

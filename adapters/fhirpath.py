"""The FHIRPath subset that SQL-on-FHIR v2 Shareable views use, compiled to Python closures.

An expression is parsed once and compiled into nested functions ``f(focus, env) -> list`` (a FHIRPath collection
is a Python list), so evaluating it per resource costs a few function calls and no parsing. Resources are plain
dicts from orjson: no model, so choice elements (``value[x]``) are found by key suffix (``valueQuantity``) and
``ofType(T)`` right after a member is compiled into a direct key lookup.

Covered: paths, indexers, ``$this``, ``%constants``, literals (string, number, boolean, ``@date``, ``{}``),
``= != < <= > >= and or xor implies not() + - * / div mod & |``, and the functions ``where exists empty first
last count not ofType extension join contains startsWith endsWith matches getResourceKey getReferenceKey
lowBoundary highBoundary iif``.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Callable

from omop_behrt.adapters.fhirpath_grammar import FhirPathError, Parser

Fn = Callable[[list, dict], list]

#: FHIR data types that may follow a choice element's base name in JSON (``value`` + ``Quantity``).
CHOICE_TYPES = frozenset(
    "Base64Binary Boolean Canonical Code Date DateTime Decimal Id Instant Integer Integer64 Markdown Oid "
    "PositiveInt String Time UnsignedInt Uri Url Uuid Address Age Annotation Attachment CodeableConcept "
    "CodeableReference Coding ContactPoint Count Distance Duration HumanName Identifier Money Period Quantity "
    "Range Ratio RatioRange Reference SampledData Signature Timing ContactDetail Contributor DataRequirement "
    "Expression ParameterDefinition RelatedArtifact TriggerDefinition UsageContext Dosage Meta Availability "
    "ExtendedContactDetail".split())
#: Base names of FHIR R4/R5 choice elements, the only names looked up by key suffix when absent.
CHOICE_BASES = frozenset(
    "value effective onset abatement deceased multipleBirth performed occurrence occurence medication timing born "
    "age serviced location product reported asNeeded rate dose allowed used defaultValue fixed pattern minValue "
    "maxValue answer identified item subject content created scheduled when period time instantiates "
    "collected fastingStatus probability entity duration statement reason target detail outcome "
    "diagnosis procedure sequence definition characteristic offset relatedArtifact".split())
_STR_TYPES = frozenset("string code id uri url canonical oid uuid markdown base64Binary date dateTime time "
                       "instant xhtml".split())
_INT_TYPES = frozenset("integer positiveInt unsignedInt integer64".split())
_SPLIT: dict[str, tuple[str, str] | None] = {}
_MISSING = object()


def _split_key(key: str) -> tuple[str, str] | None:
    """``valueQuantity`` -> (``value``, ``Quantity``); None when the key is not a choice element."""
    r = _SPLIT.get(key, _MISSING)
    if r is _MISSING:
        r = None
        for i in range(1, len(key)):
            if key[i].isupper() and key[i:] in CHOICE_TYPES:
                r = (key[:i], key[i:])
                break
        _SPLIT[key] = r
    return r


def _choice(item: dict, name: str) -> Any:
    for k, v in item.items():
        s = _split_key(k)
        if s is not None and s[0] == name:
            return v
    return _MISSING


def _type_matches(value: Any, t: str) -> bool:
    if t in _STR_TYPES or t == "String":
        return isinstance(value, str)
    if t in _INT_TYPES:
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "decimal":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    return isinstance(value, dict) and (value.get("resourceType", t) == t)


# -- compiler -------------------------------------------------------------------------------------------
def _truth(c: list) -> bool | None:
    """Singleton evaluation of a collection as a boolean (empty -> None)."""
    if not c:
        return None
    if len(c) > 1:
        raise FhirPathError(f"expected a single boolean, got a collection of {len(c)}")
    v = c[0]
    return v if isinstance(v, bool) else True


def _num(v: Any) -> Any:
    return Decimal(repr(v)) if isinstance(v, float) else v


def _out(v: Any) -> Any:
    return float(v) if isinstance(v, Decimal) else v


def _compare(op: str, a: list, b: list) -> list:
    if not a or not b:
        return []
    if op in ("=", "!=", "~", "!~"):
        eq = len(a) == len(b) and all(_num(x) == _num(y) for x, y in zip(a, b))
        return [eq if op in ("=", "~") else not eq]
    if len(a) > 1 or len(b) > 1:
        raise FhirPathError(f"comparison {op} needs single values")
    x, y = _num(a[0]), _num(b[0])
    try:
        return [{"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]]
    except TypeError:
        return []


def _arith(op: str, a: list, b: list) -> list:
    if not a or not b:
        return []
    x, y = _num(a[0]), _num(b[0])
    if op == "&" or (op == "+" and isinstance(x, str)):
        return [(a[0] if a else "") + (b[0] if b else "")]
    if op in ("/", "div", "mod") and y == 0:
        return []
    r = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y, "/": lambda: Decimal(x) / Decimal(y),
         "div": lambda: x // y, "mod": lambda: x % y}[op]()
    return [_out(r)]


def _boundary(v: Any, high: bool, hint: str | None = None) -> Any:
    """lowBoundary()/highBoundary() of a decimal, date, dateTime or time by its stated precision."""
    if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
        d = Decimal(repr(v)) if isinstance(v, float) else Decimal(v)
        half = Decimal(1).scaleb(d.as_tuple().exponent - 1) * 5
        return _out(d + half if high else d - half)
    if not isinstance(v, str):
        return None
    if re.fullmatch(r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?", v):
        base = v + (":00" if len(v) == 5 else "")
        return base + (".999" if high else ".000") if "." not in base else base
    m = re.fullmatch(r"(\d{4})(-(\d{2}))?(-(\d{2}))?(T[^+\-Z]*)?(Z|[+\-]\d{2}:\d{2})?", v)
    if not m:
        return None
    import calendar
    y, mo, d, t, tz = int(m.group(1)), m.group(3), m.group(5), m.group(6), m.group(7)
    mo = int(mo) if mo else (12 if high else 1)
    d = int(d) if d else (calendar.monthrange(y, mo)[1] if high else 1)
    date = f"{y:04d}-{mo:02d}-{d:02d}"
    is_datetime = t is not None or tz is not None or hint in ("dateTime", "instant")
    if not is_datetime:
        return date
    clock = (t or "T")[1:]
    hh, mm, ss = (clock.split(":") + [None, None, None])[:3]
    default = ("23", "59", "59.999") if high else ("00", "00", "00.000")
    ss = ss if ss and "." in ss else (ss + (".999" if high else ".000") if ss else default[2])
    return f"{date}T{hh or default[0]}:{mm or default[1]}:{ss}{tz or ('-12:00' if high else '+14:00')}"


def _reference_key(ref: Any, rtype: str | None) -> list:
    s = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(s, str) or "://" in s or s.startswith(("urn:", "#")):
        return []
    parts = s.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) != 2 or (rtype is not None and parts[0] != rtype):
        return []
    return [f"{parts[0]}/{parts[1]}"]


class Compiler:
    """Compiles parsed expressions; ``constants`` are the view's ``%name`` values (``%rowIndex`` is per row)."""

    def __init__(self, constants: dict[str, Any] | None = None):
        self.constants = constants or {}

    def compile(self, src: str) -> Fn:
        if not isinstance(src, str):
            raise FhirPathError(f"a FHIRPath expression must be a string, got {src!r}")
        return self.node(Parser(src).parse())

    @staticmethod
    def member_names(src: str) -> list[str] | None:
        """The names of a plain member chain from ``$this`` (``subject.reference``), else None."""
        node, names = Parser(src).parse(), []
        while node[0] == "member":
            names.insert(0, node[2])
            node = node[1]
        return names if node == ("this",) and names else None

    @staticmethod
    def literal(src: str) -> list | None:
        """The values of an expression that is one literal (``'drug'``), else None."""
        node = Parser(src).parse()
        return [_out(v) for v in node[1]] if node[0] == "lit" else None

    def node(self, n: tuple) -> Fn:
        kind = n[0]
        if kind == "this":
            return lambda focus, env: focus
        if kind == "lit":
            val = [_out(v) for v in n[1]]
            return lambda focus, env: val
        if kind == "ext":
            name = n[1]
            if name == "rowIndex":
                return lambda focus, env: [env.get("rowIndex", 0)]
            if name in ("resource", "rootResource", "context"):
                return lambda focus, env: [env["resource"]]
            if name not in self.constants:
                raise FhirPathError(f"%{name} is not a constant of this view (constants: "
                                    f"{', '.join(sorted(self.constants)) or 'none'})")
            val = self.constants[name]
            val = val if isinstance(val, list) else [val]
            return lambda focus, env: val
        if kind == "var":
            name = n[1]
            return lambda focus, env: [env[name]] if name in env else []
        if kind == "member":
            return self.member(n[1], n[2])
        if kind == "index":
            base, idx = self.node(n[1]), self.node(n[2])

            def index(focus, env):
                c, i = base(focus, env), idx(focus, env)
                return [c[i[0]]] if i and 0 <= i[0] < len(c) else []
            return index
        if kind == "bin":
            if n[1] in ("=", "!=") and n[3][0] == "lit" and len(n[3][1]) == 1 and type(n[3][1][0]) is str:
                return self.equals_text(n[1] == "=", self.node(n[2]), n[3][1][0])
            return self.binary(n[1], self.node(n[2]), self.node(n[3]))
        if kind == "call":
            return self.call(n[1], n[2], n[3])
        raise FhirPathError(f"unsupported FHIRPath node {kind}")

    def member(self, base_node: tuple, name: str) -> Fn:
        """A chain of member accesses (``a.b.c``) compiled into one loop, with a fast path for one item."""
        names = [name]
        while base_node[0] == "member":
            names.insert(0, base_node[2])
            base_node = base_node[1]
        from_this = base_node == ("this",)
        base = self.node(base_node)

        def step(items: list, name: str, root: bool) -> list:
            out: list = []
            for it in items:
                if type(it) is not dict:
                    continue
                v = it.get(name, _MISSING)
                if v is _MISSING:
                    if root and it.get("resourceType") == name:
                        out.append(it)
                        continue
                    if name not in CHOICE_BASES or (v := _choice(it, name)) is _MISSING:
                        continue
                if type(v) is list:
                    out.extend(v)
                    if None in v:
                        out = [x for x in out if x is not None]
                elif v is not None:
                    out.append(v)
            return out

        def chain(focus, env):
            cur = focus if from_this else base(focus, env)
            root = from_this
            for name in names:
                if len(cur) == 1 and type(cur[0]) is dict:
                    it = cur[0]
                    v = it.get(name, _MISSING)
                    if v is _MISSING:
                        if root and it.get("resourceType") == name:
                            root = False
                            continue
                        if name not in CHOICE_BASES or (v := _choice(it, name)) is _MISSING:
                            return []
                    if type(v) is list:
                        cur = v if None not in v else [x for x in v if x is not None]
                    elif v is None:
                        return []
                    else:
                        cur = [v]
                else:
                    cur = step(cur, name, root)
                    if not cur:
                        return cur
                root = False
            return cur
        return chain

    @staticmethod
    def equals_text(eq: bool, a: Fn, text: str) -> Fn:
        """``a = 'text'`` (``!=``: ``eq`` False), as :func:`_compare` gives it: a string equals only itself."""
        def equals(focus, env):
            x = a(focus, env)
            if not x:
                return []
            return [(len(x) == 1 and x[0] == text) is eq]
        return equals

    def binary(self, op: str, a: Fn, b: Fn) -> Fn:
        if op in ("and", "or", "implies"):
            # the right operand is not evaluated when the left one decides (true or ..., false and ...,
            # false implies ...)
            decides = {"and": False, "or": True, "implies": False}[op]
            result = op != "and"

            def logic(focus, env):
                x = _truth(a(focus, env))
                if x is decides:
                    return [result]
                y = _truth(b(focus, env))
                if op == "and":
                    r = False if y is False else (None if x is None or y is None else True)
                elif op == "or":
                    r = True if y is True else (None if x is None or y is None else False)
                else:
                    r = True if y is True else (None if x is None or y is None else False)
                return [] if r is None else [r]
            return logic
        if op == "xor":
            def logic(focus, env):
                x, y = _truth(a(focus, env)), _truth(b(focus, env))
                r = None if x is None or y is None else x != y
                return [] if r is None else [r]
            return logic
        if op == "|":
            def union(focus, env):
                out = []
                for v in a(focus, env) + b(focus, env):
                    if v not in out:
                        out.append(v)
                return out
            return union
        if op in ("=", "!=", "~", "!~", "<", ">", "<=", ">="):
            return lambda focus, env: _compare(op, a(focus, env), b(focus, env))
        if op in ("+", "-", "*", "/", "div", "mod", "&"):
            return lambda focus, env: _arith(op, a(focus, env), b(focus, env))
        if op in ("in", "contains"):
            def member_of(focus, env):
                x, y = (a(focus, env), b(focus, env)) if op == "in" else (b(focus, env), a(focus, env))
                return [] if not x else [x[0] in y]
            return member_of
        raise FhirPathError(f"operator {op!r} is not supported")

    def call(self, base_node: tuple, name: str, args: list) -> Fn:
        base = self.node(base_node)
        if name == "ofType" or name == "is":
            if len(args) != 1 or args[0][0] not in ("type", "member"):
                raise FhirPathError(f"{name}() takes one type name")
            t = args[0][1] if args[0][0] == "type" else args[0][2]
            t = t.split(".")[-1]
            if name == "ofType" and base_node[0] == "member":
                return self.typed_member(base_node, t)
            if name == "is":
                return lambda focus, env: [bool(c) and _type_matches(c[0], t)] if (c := base(focus, env)) else []
            return lambda focus, env: [v for v in base(focus, env) if _type_matches(v, t)]
        if name == "where":
            crit = self.node(args[0])
            return lambda focus, env: [v for v in base(focus, env) if _truth(crit([v], env))]
        if name == "exists":
            if not args and base_node[0] == "call" and base_node[2] == "where" and len(base_node[3]) == 1:
                inner, crit = self.node(base_node[1]), self.node(base_node[3][0])    # stops at the first match
                return lambda focus, env: [any(_truth(crit([v], env)) for v in inner(focus, env))]
            if args:
                crit = self.node(args[0])
                return lambda focus, env: [any(_truth(crit([v], env)) for v in base(focus, env))]
            return lambda focus, env: [bool(base(focus, env))]
        hint = base_node[3][0][1] if base_node[0] == "call" and base_node[2] == "ofType" and base_node[3] \
            and base_node[3][0][0] == "type" else None
        if base_node[0] == "call" and base_node[2] == "ofType" and base_node[3][0][0] == "member":
            hint = base_node[3][0][2]
        if name == "first" and not args and base_node[0] == "bin" and base_node[1] == "|":
            return self.first_of(base_node)
        if name == "first" and not args and base_node[0] == "call" and base_node[2] == "where":
            inner, crit = self.operands(base_node[1]), self.node(base_node[3][0])

            def first_where(focus, env):
                for fn in inner:
                    for v in fn(focus, env):
                        if _truth(crit([v], env)):
                            return [v]
                return []
            return first_where
        simple: dict[str, Callable[[list], list]] = {
            "empty": lambda c: [not c],
            "first": lambda c: c[:1],
            "last": lambda c: c[-1:],
            "count": lambda c: [len(c)],
            "not": lambda c: [] if (t := _truth(c)) is None else [not t],
            "lowBoundary": lambda c: [b for v in c if (b := _boundary(v, False, hint)) is not None],
            "highBoundary": lambda c: [b for v in c if (b := _boundary(v, True, hint)) is not None],
            "getResourceKey": lambda c: [f"{v['resourceType']}/{v.get('id')}" for v in c if isinstance(v, dict)],
        }
        if name in simple:
            if args:
                raise FhirPathError(f"{name}() takes no arguments")
            fn = simple[name]
            return lambda focus, env: fn(base(focus, env))
        if name == "getReferenceKey":
            rtype = (args[0][2] if args and args[0][0] == "member" else None)
            return lambda focus, env: [k for v in base(focus, env) for k in _reference_key(v, rtype)]
        arg_fns = [self.node(a) for a in args]
        if name == "join":
            def join(focus, env):
                sep = arg_fns[0](focus, env) if arg_fns else [""]
                return [(sep or [""])[0].join(str(v) for v in base(focus, env))]
            return join
        if name in ("contains", "startsWith", "endsWith", "matches"):
            test = {"contains": lambda v, a: a in v, "startsWith": lambda v, a: v.startswith(a),
                    "endsWith": lambda v, a: v.endswith(a), "matches": lambda v, a: re.search(a, v) is not None}[name]

            def string_test(focus, env):
                c, a = base(focus, env), arg_fns[0](focus, env) if arg_fns else []
                if not c or not a or not isinstance(c[0], str):
                    return []
                return [test(c[0], a[0])]
            return string_test
        if name == "extension":
            def extension(focus, env):
                url = arg_fns[0](focus, env)
                return [e for it in base(focus, env) if isinstance(it, dict)
                        for e in it.get("extension", ()) if url and e.get("url") == url[0]]
            return extension
        if name == "iif":
            def iif(focus, env):
                c = _truth(arg_fns[0](focus, env))
                return arg_fns[1](focus, env) if c else (arg_fns[2](focus, env) if len(arg_fns) > 2 else [])
            return iif
        raise FhirPathError(f"function {name}() is not in the supported FHIRPath subset")

    def operands(self, node: tuple) -> list[Fn]:
        """The compiled operands of a union ``a | b | c`` in order (a node that is no union: itself)."""
        if node[0] == "bin" and node[1] == "|":
            return self.operands(node[2]) + self.operands(node[3])
        return [self.node(node)]

    def first_of(self, union: tuple) -> Fn:
        """``(a | b | c).first()``: the first item of the first non-empty operand (the union keeps that order)."""
        fns = self.operands(union)

        def first(focus, env):
            for fn in fns:
                c = fn(focus, env)
                if c:
                    return c[:1]
            return []
        return first

    def typed_member(self, member_node: tuple, t: str) -> Fn:
        """``x.ofType(T)`` on a member: the JSON key ``xT`` (choice element), else ``x`` when of type T."""
        base, name = self.node(member_node[1]), member_node[2]
        key = name + t[0].upper() + t[1:]

        def typed(focus, env):
            out = []
            for it in base(focus, env):
                if type(it) is not dict:
                    continue
                v = it.get(key, _MISSING)
                if v is _MISSING:
                    v = it.get(name, _MISSING)
                    if v is _MISSING or not all(_type_matches(x, t) for x in (v if type(v) is list else [v])):
                        continue
                if type(v) is list:
                    out.extend(x for x in v if x is not None)
                elif v is not None:
                    out.append(v)
            return out
        return typed

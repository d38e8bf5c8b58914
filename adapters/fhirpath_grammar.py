"""FHIRPath grammar: tokens and a precedence-climbing parser into small tuples (the compiler's input).

Nodes: ("this",), ("lit", [values]), ("ext", name) for %name, ("var", name) for $index/$total,
("member", base, name), ("index", base, expr), ("bin", op, left, right), ("call", base, name, [args]),
("type", name) for the argument of ofType/is/as.
"""
from __future__ import annotations

import re
from decimal import Decimal


class FhirPathError(ValueError):
    """An expression does not parse, uses something outside the subset, or misbehaves on a resource."""


# -- tokens ------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<date>@T?[0-9][0-9:.+\-TZ]*)
  | (?P<num>[0-9]+(?:\.[0-9]+)?)
  | (?P<ext>%(?:[A-Za-z_][A-Za-z0-9_]*|`[^`]*`|'[^']*'))
  | (?P<var>\$(?:this|index|total))
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]*`)
  | (?P<op><=|>=|!=|!~|[.\[\](),=<>+\-*/|&~{}])
""", re.X | re.S)
_ESC = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _tokens(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise FhirPathError(f"FHIRPath {src!r}: unexpected {src[pos:pos + 10]!r} at position {pos}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "u"
                  else _ESC.get(m.group(1), m.group(1)), s)


# -- parser: precedence climbing into tuples ----------------------------------------------------------
_BINARY = [("implies",), ("or", "xor"), ("and",), ("in", "contains"), ("=", "~", "!=", "!~"),
           ("<", ">", "<=", ">="), ("|",), ("is", "as"), ("+", "-", "&"), ("*", "/", "div", "mod")]


class Parser:
    """Parses one expression into nested tuples (see the module docstring for the node kinds)."""

    def __init__(self, src: str):
        self.src, self.toks, self.i = src, _tokens(src), 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        t = self.peek()
        if t is None or (value is not None and t[1] != value):
            raise FhirPathError(f"FHIRPath {self.src!r}: expected {value or 'more'}, found "
                                f"{t[1] if t else 'end of expression'!r}")
        self.i += 1
        return t

    def parse(self) -> tuple:
        node = self.binary(0)
        if self.peek() is not None:
            raise FhirPathError(f"FHIRPath {self.src!r}: unexpected {self.peek()[1]!r}")
        return node

    def binary(self, level: int) -> tuple:
        if level == len(_BINARY):
            return self.unary()
        node = self.binary(level + 1)
        while (t := self.peek()) is not None and t[1] in _BINARY[level] and t[0] in ("op", "id"):
            self.i += 1
            if t[1] in ("is", "as"):
                node = ("call", node, "ofType" if t[1] == "as" else "is", [("type", self.take()[1])])
            else:
                node = ("bin", t[1], node, self.binary(level + 1))
        return node

    def unary(self) -> tuple:
        t = self.peek()
        if t is not None and t[1] in ("+", "-") and t[0] == "op":
            self.i += 1
            inner = self.unary()
            return inner if t[1] == "+" else ("bin", "*", ("lit", [-1]), inner)
        return self.postfix(self.term())

    def term(self) -> tuple:
        kind, text = self.take()
        if kind == "str":
            return ("lit", [_unescape(text[1:-1])])
        if kind == "num":
            return ("lit", [Decimal(text) if "." in text else int(text)])
        if kind == "date":
            return ("lit", [text[1:]])
        if kind == "ext":
            return ("ext", text[1:].strip("`'"))
        if kind == "var":
            return ("this",) if text == "$this" else ("var", text[1:])
        if text == "(":
            node = self.binary(0)
            self.take(")")
            return node
        if text == "{":
            self.take("}")
            return ("lit", [])
        if kind == "id":
            if text in ("true", "false"):
                return ("lit", [text == "true"])
            return self.invocation(("this",), text.strip("`"))
        raise FhirPathError(f"FHIRPath {self.src!r}: unexpected {text!r}")

    def invocation(self, base: tuple, name: str) -> tuple:
        if self.peek() == ("op", "("):
            self.i += 1
            args = []
            while self.peek() != ("op", ")"):
                args.append(self.binary(0))
                if self.peek() == ("op", ","):
                    self.i += 1
            self.take(")")
            return ("call", base, name, args)
        return ("member", base, name)

    def postfix(self, node: tuple) -> tuple:
        while (t := self.peek()) is not None:
            if t == ("op", "."):
                self.i += 1
                kind, text = self.take()
                if kind != "id":
                    raise FhirPathError(f"FHIRPath {self.src!r}: expected a name after '.', found {text!r}")
                node = self.invocation(node, text.strip("`"))
            elif t == ("op", "["):
                self.i += 1
                idx = self.binary(0)
                self.take("]")
                node = ("index", node, idx)
            else:
                break
        return node

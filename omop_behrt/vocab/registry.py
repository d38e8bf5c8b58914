"""Vocabularies: which tokens the model sees for each event, as a plug-in choice (DESIGN.md, Vocabulary contract).

A vocabulary maps the *distinct codes* of an event stream to tokens; :func:`omop_behrt.vocab.mapping.map_events`
then joins that small mapping back onto the events in DuckDB (one vectorised join, never a per-row Python loop).
A code may give
several tokens (CALIBER's overlapping phenotypes), none (unmapped: counted and reported), or be dropped on
purpose by a filter (counted as dropped).

Spec strings (``vocab=`` and ``--vocab``)::

    caliber                         one vocabulary
    caliber(level=chapter)          with parameters, ``key=value`` separated by ``,``; lists as ``a|b``
    caliber,concept,source          a chain: per code, the first member that maps it wins
    drop(tag=finding),caliber       filters are chain members too: what they match is dropped, not unmapped
    condition=caliber,source; drug|device=concept; *=source
                                    per domain (``;`` between parts, ``|`` between domains, ``*`` = the rest;
                                    a domain matched by no part is unmapped)

Third-party vocabularies register a :class:`Vocabulary` subclass in the entry-point group
``omop_behrt.vocabularies``; the built-ins are declared there too (pyproject.toml).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.events import DOMAINS

ENTRY_POINT_GROUP = "omop_behrt.vocabularies"

#: The token stream every later stage reads (one row per token; an event may give several or none).
TOKENS_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("time", pa.timestamp("us")),
    pa.field("visit_id", pa.int64(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("code", pa.string(), nullable=False),
    pa.field("token", pa.string(), nullable=False),
])

#: What a vocabulary returns for the keys it was given: token NULL means "dropped on purpose".
MAPPING_SCHEMA = pa.schema([pa.field("key_id", pa.int64(), nullable=False), pa.field("token", pa.string())])

#: The distinct codes a vocabulary is asked to map, with their parts split out for convenience.
KEYS_SCHEMA = pa.schema([
    pa.field("key_id", pa.int64(), nullable=False),
    pa.field("domain", pa.string()), pa.field("code", pa.string()), pa.field("source_code", pa.string()),
    pa.field("concept_id", pa.int64()), pa.field("source_concept_id", pa.int64()),
    pa.field("code_vocab", pa.string()), pa.field("code_value", pa.string()),
    pa.field("source_vocab", pa.string()), pa.field("source_value", pa.string()),
    pa.field("n_events", pa.int64()), pa.field("n_persons", pa.int64()),
])


class VocabularyError(ValueError):
    """A vocabulary spec, parameter or mapping table is unusable; the message says which and what was expected."""


class VocabularyWarning(UserWarning):
    """A mapping ran but on something a user should know about (an empty concept_ancestor, say)."""


@dataclass
class MapContext:
    """What a vocabulary may use while mapping: a DuckDB connection for its joins and the CDM, if one was given."""

    con: Any                      # duckdb.DuckDBPyConnection
    cdm: Any = None               # omop_behrt.db.cdm.OmopCdm or None
    warnings: list[str] = field(default_factory=list)   # said in the coverage report and on stderr

    def warn(self, message: str) -> None:
        """Record a warning for the coverage report (once) and raise it as a Python warning (stderr)."""
        if message not in self.warnings:
            self.warnings.append(message)
            warnings.warn(message, VocabularyWarning, stacklevel=3)

    def sql(self, query: str, params: dict | None = None, **tables: pa.Table) -> pa.Table:
        """Run ``query`` over the given Arrow tables (registered under their keyword names), values bound from
        ``params`` (``$name``), and return Arrow."""
        for name, table in tables.items():
            self.con.register(name, table)
        try:
            return self.con.sql(query, params=params).to_arrow_table()
        finally:
            for name in tables:
                self.con.unregister(name)


class Vocabulary:
    """Base class of every vocabulary: maps distinct event codes to tokens (override :meth:`map_keys`).

    ``map_keys`` receives the distinct keys (KEYS_SCHEMA, small: one row per distinct code, not per event) and
    returns MAPPING_SCHEMA rows: several rows for one key give several tokens, a NULL token drops the key on
    purpose, a key without rows is unmapped. Parameters arrive as strings from spec strings.
    """

    name: ClassVar[str] = ""
    params: dict[str, str]

    def __init__(self, **params: Any) -> None:
        self.params = {k: str(v) for k, v in params.items()}

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        raise NotImplementedError

    def map_keys_by_member(self, keys: pa.Table, ctx: MapContext) -> tuple[pa.Table, pa.Table]:
        """The mapping (checked against MAPPING_SCHEMA), and which member (by spec) decided each key.

        A leaf vocabulary decided every key it returned rows for; composites override this.
        """
        mapping = _check_mapping(self.map_keys(keys, ctx), self)
        return mapping, _decided_by(pc.unique(mapping.column("key_id")), self.spec())

    def members(self) -> list["Vocabulary"]:
        """The leaf vocabularies (for reports); a composite returns its parts."""
        return [self]

    def spec(self) -> str:
        """The spec string that rebuilds this vocabulary (stored with models as the vocabulary's identity)."""
        if not self.params:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items())) + ")"

    def _param(self, key: str, default: str | None = None, allowed: Iterable[str] | None = None) -> str | None:
        value = self.params.get(key, default)
        if allowed is not None and value is not None and value not in allowed:
            raise VocabularyError(f"vocabulary {self.name!r}: parameter {key}={value!r}; expected one of "
                                  f"{sorted(allowed)}")
        return value

    def _check_params(self, known: Iterable[str]) -> None:
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            raise VocabularyError(f"vocabulary {self.name!r}: unknown parameter(s) {unknown}; "
                                  f"expected some of {sorted(known)}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec()}>"


def mapping_table(key_id: Any, token: Any) -> pa.Table:
    """A MAPPING_SCHEMA table from two columns (arrays, lists or a query result's columns)."""
    return pa.table({"key_id": pa.array(key_id, pa.int64()) if not isinstance(key_id, pa.ChunkedArray)
                     else key_id.cast(pa.int64()),
                     "token": pa.array(token, pa.string()) if not isinstance(token, pa.ChunkedArray)
                     else token.cast(pa.string())}, schema=MAPPING_SCHEMA)


# -- built-ins that need nothing but the events ----------------------------------------------------------
class Source(Vocabulary):
    """The event's own ``VOCAB/code``: the ``code`` column as it is (or ``column=source_code``)."""

    name = "source"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._check_params(["column"])
        self.column = self._param("column", "code", allowed=["code", "source_code"])

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        col = keys.column(self.column)
        present = pc.is_valid(col)
        return mapping_table(pc.filter(keys.column("key_id"), present), pc.filter(col, present))


def split_list(value: str | None) -> list[str]:
    """``a|b|c`` -> ``["a", "b", "c"]`` (list-valued spec parameters and domain lists)."""
    return [v.strip() for v in (value or "").split("|") if v.strip()]


# -- composition -----------------------------------------------------------------------------------------
def _decided_by(key_ids: Any, member: str) -> pa.Table:
    """The ``who`` table (key_id, member) saying that ``member`` decided ``key_ids``."""
    arrow = isinstance(key_ids, (pa.Array, pa.ChunkedArray))
    ids = key_ids.cast(pa.int64()) if arrow else pa.array(key_ids, pa.int64())
    return pa.table({"key_id": ids, "member": pa.array([member] * len(ids), pa.string())})


class Composite(Vocabulary):
    """A vocabulary made of others (Chain, PerDomain): ``map_keys`` is its ``map_keys_by_member`` mapping."""

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        return self.map_keys_by_member(keys, ctx)[0]


class Chain(Composite):
    """Members tried in order; for each code the first member that maps (or drops) it wins."""

    name = "chain"

    def __init__(self, members: list[Vocabulary]):
        super().__init__()
        self.parts = members

    def members(self) -> list[Vocabulary]:
        return [m for p in self.parts for m in p.members()]

    def spec(self) -> str:
        return ",".join(p.spec() for p in self.parts)

    def map_keys_by_member(self, keys: pa.Table, ctx: MapContext) -> tuple[pa.Table, pa.Table]:
        """The mapping, and which member (by spec) decided each key."""
        out, decided = [], []
        pending = keys
        for part in self.parts:
            if pending.num_rows == 0:
                break
            got, who = part.map_keys_by_member(pending, ctx)
            out.append(got)
            decided.append(who)
            pending = pending.filter(pc.invert(pc.is_in(pending.column("key_id"), who.column("key_id"))))
        mapping = pa.concat_tables(out) if out else MAPPING_SCHEMA.empty_table()
        who = pa.concat_tables(decided) if decided else _decided_by([], "")
        return mapping, who


class PerDomain(Composite):
    """A chain per domain (``condition=caliber,source; *=source``); domains matched by no part stay unmapped."""

    name = "per-domain"

    def __init__(self, parts: list[tuple[list[str], Chain]]):
        super().__init__()
        self.parts = parts

    def members(self) -> list[Vocabulary]:
        return [m for _, c in self.parts for m in c.members()]

    def spec(self) -> str:
        return "; ".join(f"{'|'.join(ds)}={c.spec()}" for ds, c in self.parts)

    def map_keys_by_member(self, keys: pa.Table, ctx: MapContext) -> tuple[pa.Table, pa.Table]:
        named = {d for ds, _ in self.parts for d in ds if d != "*"}
        maps, whos = [], []
        for domains, chain in self.parts:
            if domains == ["*"]:
                mask = pc.invert(pc.is_in(keys.column("domain"), pa.array(sorted(named))))
            else:
                mask = pc.is_in(keys.column("domain"), pa.array(domains))
            m, w = chain.map_keys_by_member(keys.filter(mask), ctx)
            maps.append(m)
            whos.append(w)
        return pa.concat_tables(maps), pa.concat_tables(whos)


def _check_mapping(table: pa.Table, vocab: Vocabulary) -> pa.Table:
    """A member's output conformed to MAPPING_SCHEMA, or an error naming the member and the column."""
    for f in MAPPING_SCHEMA:
        if f.name not in table.column_names:
            raise VocabularyError(f"vocabulary {vocab.spec()!r} returned no column {f.name!r}; map_keys must "
                                  f"return (key_id int64, token string)")
    return table.select(MAPPING_SCHEMA.names).cast(MAPPING_SCHEMA)


# -- registry and spec strings ---------------------------------------------------------------------------
BUILTINS: dict[str, str] = {
    "source": "omop_behrt.vocab.registry:Source",
    "csv": "omop_behrt.vocab.codelists:Csv",
    "drop": "omop_behrt.vocab.codelists:Drop",
    "concept": "omop_behrt.vocab.concepts:Concept",
    "ancestor": "omop_behrt.vocab.concepts:Ancestor",
    "caliber": "omop_behrt.vocab.caliber:Caliber",
}


def available_vocabularies() -> dict[str, metadata.EntryPoint]:
    """Vocabularies by name from the entry-point group (built-ins are declared there as well)."""
    found = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name, value in BUILTINS.items():   # a source tree that was never pip-installed has no entry points
        found.setdefault(name, metadata.EntryPoint(name, value, ENTRY_POINT_GROUP))
    return found


def get_vocabulary(spec: "str | Vocabulary", **params: Any) -> Vocabulary:
    """A vocabulary from a name (``caliber``), a spec string (see module doc) or an instance (returned as is)."""
    if isinstance(spec, Vocabulary):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise VocabularyError(f"vocabulary spec must be a non-empty string or a Vocabulary; got {spec!r}")
    if params:
        return _load(spec.strip(), {k: str(v) for k, v in params.items()})
    parts = _split_top(spec, ";")
    if len(parts) == 1 and not _domain_prefix(parts[0]):
        return _chain(parts[0])
    out = []
    for part in parts:
        head = _domain_prefix(part)
        if head is None:
            raise VocabularyError(f"vocabulary spec {spec!r}: part {part.strip()!r} names no domain; in a "
                                  f"per-domain spec every part reads domain=vocabularies (or *=vocabularies)")
        domains = split_list(head)
        bad = [d for d in domains if d != "*" and d not in DOMAINS]
        if bad:
            raise VocabularyError(f"vocabulary spec {spec!r}: unknown domain(s) {bad}; expected some of "
                                  f"{list(DOMAINS)} or *")
        chain = _chain(part.split("=", 1)[1])
        out.append((domains, chain if isinstance(chain, Chain) else Chain([chain])))
    return PerDomain(out)


_NAME = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(?:\((.*)\))?\s*$", re.S)


def _domain_prefix(part: str) -> str | None:
    """``condition|drug`` from ``condition|drug=caliber,...`` (an ``=`` before any ``(`` or ``,``), else None."""
    for i, ch in enumerate(part):
        if ch in "(,":
            return None
        if ch == "=":
            return part[:i].strip()
    return None


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise VocabularyError(f"vocabulary spec {text!r}: unbalanced ')'")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise VocabularyError(f"vocabulary spec {text!r}: unbalanced '('")
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _chain(text: str) -> Vocabulary:
    items = _split_top(text, ",")
    if not items:
        raise VocabularyError(f"vocabulary spec {text!r} names no vocabulary")
    members = []
    for item in items:
        m = _NAME.match(item)
        if not m:
            raise VocabularyError(f"vocabulary spec item {item.strip()!r}: expected name or name(key=value,...)")
        params = {}
        for kv in _split_top(m.group(2) or "", ","):
            if "=" not in kv:
                raise VocabularyError(f"vocabulary spec item {item.strip()!r}: parameter {kv.strip()!r} "
                                      f"is not key=value")
            k, v = kv.split("=", 1)
            params[k.strip()] = v.strip()
        members.append(_load(m.group(1), params))
    return members[0] if len(members) == 1 else Chain(members)


def _load(name: str, params: dict[str, str]) -> Vocabulary:
    eps = available_vocabularies()
    if name not in eps:
        raise VocabularyError(f"unknown vocabulary {name!r}; available: {', '.join(sorted(eps))} (plug-ins "
                              f"register in the entry-point group {ENTRY_POINT_GROUP!r})")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Vocabulary)):
        raise VocabularyError(f"entry point {name!r} ({eps[name].value}) is not a Vocabulary subclass")
    vocab = cls(**params)
    vocab.name = name          # the registered name, so that spec() rebuilds it
    return vocab

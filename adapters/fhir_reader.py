"""Streaming FHIR input: R4 Bundles (.json/.json.gz) and bulk-export NDJSON (.ndjson[.gz]); which files are FHIR
is :mod:`omop_behrt.adapters.fhir_files`' business.

Files are read one at a time (a Bundle whole, NDJSON line by line) and parsed with orjson, so a folder of any size
streams in bounded memory. Each resource comes with where it was found (file, line number or bundle entry index)
and, for Bundles, the entry fullUrls that ``urn:uuid:`` references resolve against.

Skimming (``read_bundle(path, wanted)``, when msgspec is installed): a Bundle's entries are first read as raw
bytes (msgspec checks the whole document's syntax without building Python objects), each resource's type is
peeked from its first bytes, and only the resources of ``wanted`` types are parsed (orjson); the others come back
unparsed, as their type name (``Item.skipped``). On Synthea bundles half the bytes are Claims and
ExplanationOfBenefits, which have no view. Anything unusual (a Bundle msgspec does not take, a resource whose type
is not its first member, bytes that are not UTF-8, nesting too deep) goes the plain orjson way, so the result is
the same. One difference is left: a number beyond the double range (``1e400``) inside a resource that is not
parsed; orjson refuses the whole Bundle (or NDJSON line) as malformed, skimming counts the resource as its type.
NDJSON lines are skimmed alike (``read_ndjson(path, wanted)``): a line of an unwanted type is only checked (msgspec:
well-formed, UTF-8, that resourceType) and counted, as bulk exports' Claim and ExplanationOfBenefit files are.
"""
from __future__ import annotations

import gzip
import re
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

import orjson

from omop_behrt.adapters.fhir_files import _STREAM_ERRORS, NotFhirError, not_fhir

try:
    import msgspec
except ImportError:              # optional: without it every resource of a Bundle is parsed
    msgspec = None

_BLOCK = 1 << 24                 # bytes read at a time when cutting a large NDJSON file into pieces
_BOM = b"\xef\xbb\xbf"               # a UTF-8 byte order mark, which some tools write first: skipped
_BUNDLE_TYPES = {"transaction", "collection", "batch", "searchset", "transaction-response", "batch-response",
                 "document", "message", "history", "subscription-notification"}


@dataclass(slots=True)
class Item:
    """One resource (or the reason it could not be read) and where it came from."""

    resource: dict | None
    row: str                     # NDJSON line number (1-based) or "entry[i]" for a Bundle entry
    error: str | None = None     # malformed JSON / not a resource
    skipped: str | None = None   # left unparsed by a skimming read: the resource's type (not a wanted one)
    urls: dict | None = None     # an entry of a Bundle met on an NDJSON line: that Bundle's fullUrl map


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _broken(path: Path, e: BaseException, after: str) -> str:
    """The quarantine reason for a stream that breaks part-way (truncated or corrupt gzip, a read error)."""
    if not path.name.endswith(".gz"):
        return f"read error {after}: {e}"
    return f"gzip stream {'truncated' if isinstance(e, EOFError) else 'corrupt'} {after}: {e}"


def ndjson_pieces(path: Path, target: int) -> list[tuple[int, int, int]]:
    """A plain (not gzip) NDJSON file as line-aligned byte ranges of about ``target`` bytes: (start, end, number of
    the first line), so that several processes can read one large bulk-export file. One pass counts the lines up
    to the last boundary (bytes.count: GB/s, against tens of MB/s for parsing); a line is never cut."""
    size = path.stat().st_size
    n = -(-size // max(1, target))
    if n <= 1:
        return [(0, size, 1)]
    marks = [size * k // n for k in range(1, n)]
    starts = [(0, 1)]
    lines = pos = mi = 0
    with open(path, "rb") as f:
        while mi < len(marks):
            block = f.read(_BLOCK)
            if not block:
                break
            end = pos + len(block)
            while mi < len(marks):
                m = max(marks[mi], starts[-1][0] + 1)      # a line start at or after the mark, after the last one
                if m - 1 >= end:
                    break
                i = block.find(b"\n", max(m - 1 - pos, 0))
                if i < 0:
                    break                                  # the line goes on in the next block
                at = pos + i + 1
                if at >= size:                             # no line after it: the rest is one piece
                    mi = len(marks)
                    break
                starts.append((at, lines + block.count(b"\n", 0, i + 1) + 1))
                mi += 1
            lines += block.count(b"\n")
            pos = end
    bounds = [s for s, _ in starts[1:]] + [size]
    return [(s, e, line) for (s, line), e in zip(starts, bounds)]


def read_ndjson(path: Path, wanted: frozenset[str] | set[str] | None = None, start: int = 0,
                end: int | None = None, first_line: int = 1) -> Iterator[Item]:
    """One Item per non-blank line; a line that is not a JSON object becomes an Item with an error.

    A stream that breaks (a truncated .gz) ends with one Item naming the line after the last one read whole.
    ``wanted`` (with msgspec installed): a line holding a resource of another type, checked to be well-formed JSON
    with that resourceType, comes back unparsed (``Item.skipped``); None parses every line.
    ``start``, ``end``, ``first_line``: only the lines of that byte range of a plain file (:func:`ndjson_pieces`),
    numbered from ``first_line``.
    """
    loads = orjson.loads
    names = _type_names(frozenset(wanted)) if wanted is not None and msgspec is not None else None
    peek = _PEEK.match
    n = first_line - 1
    span = (1 << 62) if end is None else end - start
    read = 0
    with _open(path) as f:
        if start:
            f.seek(start)
        try:
            for n, line in enumerate(f, first_line):
                if read >= span:
                    break
                if read == 0 and start == 0 and line.startswith(_BOM):
                    line = line[3:]           # a UTF-8 byte order mark (Windows tools write one): not the line's
                    read = 3
                read += len(line)
                if names is not None and (m := peek(line, 0, 120)) is not None \
                        and (rt := names[m.group(1)]) is not True and _is_typed(line, rt):
                    yield Item(None, str(n), None, rt)
                    continue
                try:
                    res = loads(line)
                except orjson.JSONDecodeError as e:
                    if line.strip():
                        yield Item(None, str(n), f"malformed JSON: {e}")
                    continue
                if type(res) is not dict:
                    yield Item(None, str(n), "not a JSON object")
                    continue
                yield Item(res, str(n))
        except _STREAM_ERRORS as e:
            yield Item(None, str(n + 1), _broken(path, e, f"after line {n}"))


def patient_ids(path: Path) -> Iterator[str]:
    """The ids of the Patients of an NDJSON file, decoding only the lines whose peeked type is Patient (or cannot be
    peeked), and of those only resourceType and id (msgspec skips the rest in C: 3.7x faster than parsing them
    with orjson). The parts read and check every line anyway; an id missed here only makes its rows wait."""
    peek = _PEEK.match
    with _open(path) as f:
        try:
            for n, line in enumerate(f):
                if n == 0 and line.startswith(_BOM):
                    line = line[3:]
                m = peek(line, 0, 120)
                if m is None or m.group(1) == b"Patient":
                    rid = _patient_id(line)
                    if rid is not None:
                        yield rid
        except _STREAM_ERRORS:        # the part reading this file quarantines the break
            return


def _patient_id(line: bytes) -> str | None:
    """The id of the Patient on ``line`` (None: another type, no string id, or not JSON)."""
    try:
        if msgspec is not None:
            res = _ID.decode(line)
            rt, rid = res.resourceType, res.id
        else:
            res = orjson.loads(line)
            rt, rid = (res.get("resourceType"), res.get("id")) if type(res) is dict else (None, None)
    except (ValueError, RecursionError) if msgspec is None else (msgspec.MsgspecError, RecursionError):
        return None
    return rid if rt == "Patient" and type(rid) is str else None


def read_bundle(path: Path, wanted: frozenset[str] | set[str] | None = None
                ) -> tuple[dict[str, tuple[str, str]], list[Item]]:
    """A Bundle's entries (Patients first, so their subjects are known) and its fullUrl -> (type, id) map.

    A file holding one resource that is not a Bundle gives that resource as entry 0; a file that cannot be read
    whole (a truncated .json.gz) gives one Item with the reason; a .json file holding NDJSON (resources one per
    line, as some servers name their exports) is read as NDJSON, its Items named by line. ``wanted``: the
    resource types to parse; the entries of other types may come back unparsed (``Item.skipped``, see the
    module's docstring); None parses all.
    Read the map through :func:`resolve`: an unparsed entry's (type, id) is found there when asked for.
    """
    try:
        with _open(path) as f:
            data = f.read()
    except _STREAM_ERRORS as e:
        return {}, [Item(None, "file", _broken(path, e, "(the Bundle cannot be read)"))]
    if data.startswith(_BOM):
        data = data[3:]
    if wanted is not None and msgspec is not None:
        skimmed = _skim(data, wanted)
        if skimmed is not None:
            return skimmed
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if _is_ndjson_content(data):    # NDJSON in a file named .json (some servers name their exports so)
            return {}, list(expand_bundles(read_ndjson(path, wanted)))
        return {}, [Item(None, "file", f"malformed JSON: {e}")]
    if type(doc) is not dict or "resourceType" not in doc:
        raise not_fhir(path)
    if doc["resourceType"] != "Bundle":
        return {}, [Item(doc, "0")]
    if doc.get("type") not in _BUNDLE_TYPES:
        raise NotFhirError(f"{path}: Bundle.type {doc.get('type')!r} is not a Bundle type "
                           f"(expected one of {sorted(_BUNDLE_TYPES)})")
    return _bundle_entries(doc)


def _bundle_entries(doc: dict, prefix: str = "") -> tuple[dict[str, tuple[str, str]], list[Item]]:
    """A parsed Bundle's entries as Items (Patients first; rows ``<prefix>entry[i]``) and its fullUrl map."""
    urls: dict[str, tuple[str, str]] = {}
    patients, others = [], []
    for i, entry in enumerate(doc.get("entry") or ()):
        res = entry.get("resource") if type(entry) is dict else None
        if type(res) is not dict:
            others.append(Item(None, f"{prefix}entry[{i}]", "bundle entry without a resource"))
            continue
        rt, rid = res.get("resourceType"), res.get("id")
        url = entry.get("fullUrl")
        if isinstance(url, str) and isinstance(rt, str) and isinstance(rid, str):
            urls[url] = (rt, rid)
        (patients if rt == "Patient" else others).append(Item(res, f"{prefix}entry[{i}]"))
    return urls, patients + others


def expand_bundles(items: Iterable[Item]) -> Iterator[Item]:
    """NDJSON lines holding whole Bundles (some pipelines write one patient's Bundle per line): each Bundle's
    entries as Items named ``line N entry[i]``, carrying that Bundle's fullUrl map (``Item.urls``), so that its
    ``urn:uuid:`` references resolve; a line whose Bundle.type is not one is quarantined. Other Items pass."""
    for item in items:
        res = item.resource
        if res is None or res.get("resourceType") != "Bundle":
            yield item
            continue
        if res.get("type") not in _BUNDLE_TYPES:
            yield Item(None, item.row, f"Bundle.type {res.get('type')!r} is not a Bundle type (expected one of "
                                       f"{sorted(_BUNDLE_TYPES)})")
            continue
        urls, entries = _bundle_entries(res, f"line {item.row} ")
        for e in entries:
            e.urls = urls
            yield e


def _is_ndjson_content(data: bytes) -> bool:
    """Whether ``data`` (not one JSON document) is NDJSON: a first line that is a resource, and more lines."""
    first, _, rest = data.lstrip().partition(b"\n")
    if not rest.strip():
        return False
    try:
        res = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return type(res) is dict and isinstance(res.get("resourceType"), str)


if msgspec is not None:
    _Entry = msgspec.defstruct("_Entry", [("fullUrl", object, None), ("resource", msgspec.Raw, msgspec.Raw())])
    _BUNDLE = msgspec.json.Decoder(msgspec.defstruct("_Bundle", [("resourceType", object), ("type", object, None),
                                                                 ("entry", list[_Entry] | None, None)]))
    _TYPED = msgspec.json.Decoder(msgspec.defstruct("_Typed", [("resourceType", object, None)]))
    _ID = msgspec.json.Decoder(msgspec.defstruct("_Id", [("resourceType", object, None), ("id", object, None)]))
_AGAIN = re.compile(rb'"resourceType"')
_PEEK = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"resourceType"[ \t\r\n]*:[ \t\r\n]*"([A-Za-z]{1,64})"')


def _is_typed(line: bytes, rt: str) -> bool:
    """Whether ``line`` is one well-formed JSON object (UTF-8) whose resourceType is ``rt`` (checked, not built)."""
    if not line.isascii():
        try:
            line.decode()
        except UnicodeDecodeError:
            return False
    try:
        return _TYPED.decode(line).resourceType == rt
    except (msgspec.MsgspecError, RecursionError):
        return False


class _Unparsed:
    """A fullUrl's entry left unparsed, and what the fullUrl meant before it (a later entry wins, if it has an id)."""

    __slots__ = ("raw", "before")

    def __init__(self, raw: object, before: object):
        self.raw, self.before = raw, before

    def target(self) -> tuple[str, str] | None:
        res = orjson.loads(memoryview(self.raw))
        rt, rid = res.get("resourceType"), res.get("id")
        if isinstance(rt, str) and isinstance(rid, str):
            return rt, rid
        before = self.before
        return before.target() if type(before) is _Unparsed else before


class _TypeNames(dict):
    """Peeked type name (bytes) -> the name as str, or True for a wanted type (parsed)."""

    def __init__(self, wanted: frozenset[str] | set[str]):
        super().__init__()
        self.wanted = wanted

    def __missing__(self, name: bytes) -> str | bool:
        text = name.decode()
        hit = self[name] = True if text in self.wanted else text
        return hit


@lru_cache(maxsize=16)
def _type_names(wanted: frozenset[str]) -> _TypeNames:
    return _TypeNames(wanted)


def _skim(data: bytes, wanted: frozenset[str] | set[str]) -> tuple[dict, list[Item]] | None:
    """:func:`read_bundle` for a well-formed Bundle, parsing only the ``wanted`` resources; None: read it plainly."""
    if not data.isascii():
        try:
            data.decode()            # msgspec does not check the UTF-8 of what it skips; orjson does
        except UnicodeDecodeError:
            return None
    try:
        return _entries(_BUNDLE.decode(data), wanted)
    except (msgspec.MsgspecError, orjson.JSONDecodeError, RecursionError):
        return None                  # malformed, too deep, or not shaped like a Bundle: the plain reader says why


def _entries(doc: object, wanted: frozenset[str] | set[str]) -> tuple[dict, list[Item]] | None:
    """The Items and fullUrl map of a Bundle read as raw entries (:func:`_skim`)."""
    if doc.resourceType != "Bundle" or doc.type not in _BUNDLE_TYPES:
        return None
    urls: dict = {}
    patients, others = [], []
    loads, peek, again, names, typed = orjson.loads, _PEEK.match, _AGAIN.search, _type_names(frozenset(wanted)), \
        _TYPED.decode
    keep, kept_patient = others.append, patients.append
    for i, entry in enumerate(doc.entry or ()):
        raw = entry.resource
        url = entry.fullUrl
        m = peek(raw, 0, 120)
        if m is not None and (rt := names[m.group(1)]) is not True \
                and (again(raw, m.end()) is None or typed(raw).resourceType == rt):
            # (a later "resourceType" may be a contained resource's, or a repeated key: the last one counts)
            if type(url) is str:
                urls[url] = _Unparsed(raw, urls.get(url))
            keep(Item(None, f"entry[{i}]", None, rt))
            continue
        res = loads(memoryview(raw)) if len(raw) else None
        if type(res) is not dict:
            keep(Item(None, f"entry[{i}]", "bundle entry without a resource"))
            continue
        rt, rid = res.get("resourceType"), res.get("id")
        if type(url) is str and isinstance(rt, str) and isinstance(rid, str):
            urls[url] = (rt, rid)
        (kept_patient if rt == "Patient" else keep)(Item(res, f"entry[{i}]"))
    return urls, patients + others


def resolve(ref: object, urls: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(type, id) a reference points at, from ``urn:uuid:<id>`` (a fullUrl), ``Type/id`` or an absolute URL."""
    if type(ref) is not str or not ref:
        return None
    hit = urls.get(ref)
    if hit is not None and type(hit) is not tuple:      # an entry left unparsed: parse it now, once
        hit = urls[ref] = hit.target()
    return hit if hit is not None else _parse_reference(ref)


@lru_cache(maxsize=1 << 16)
def _parse_reference(ref: str) -> tuple[str, str] | None:
    if ref.startswith(("urn:", "#")):
        return None
    parts = ref.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-1]:
        return None
    return parts[-2], parts[-1]

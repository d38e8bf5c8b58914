"""Finding and streaming FHIR input: R4 Bundles (.json/.json.gz) and bulk-export NDJSON (.ndjson[.gz]).

Files are read one at a time (a Bundle whole, NDJSON line by line) and parsed with orjson, so a folder of any size
streams in bounded memory. Each resource comes with where it was found (file, line number or bundle entry index)
and, for Bundles, the entry fullUrls that ``urn:uuid:`` references resolve against.
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import orjson

_SUFFIXES = (".ndjson", ".ndjson.gz", ".json", ".json.gz", ".jsonl", ".jsonl.gz")
_BUNDLE_TYPES = {"transaction", "collection", "batch", "searchset", "transaction-response", "batch-response",
                 "document", "message", "history", "subscription-notification"}


class NotFhirError(ValueError):
    """A file that is not FHIR at all (named in the message, with what was expected)."""


@dataclass(slots=True)
class Item:
    """One resource (or the reason it could not be read) and where it came from."""

    resource: dict | None
    row: str                     # NDJSON line number (1-based) or "entry[i]" for a Bundle entry
    error: str | None = None     # malformed JSON / not a resource


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with _open(path) as f:
            return f.read(n)
    except (OSError, EOFError) as e:
        raise NotFhirError(f"{path}: cannot be read as {'gzip' if path.name.endswith('.gz') else 'text'} ({e})")


def is_ndjson(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz"))


def sniff(path: Path) -> str | None:
    """'ndjson', 'bundle' (any JSON FHIR file), 'export-meta' (bulk manifest / log), or None when not FHIR."""
    path = Path(path)
    if not path.name.lower().endswith(_SUFFIXES):
        return None
    head = _head(path)
    if is_ndjson(path):
        first = head.lstrip().split(b"\n", 1)[0]
        if b'"exportId"' in first or b'"eventId"' in first:
            return "export-meta"
        return "ndjson" if b'"resourceType"' in first or not head.strip() else None
    if b'"resourceType"' in head:
        return "bundle"
    if b'"transactionTime"' in head and b'"output"' in head:
        return "export-meta"
    return None


def is_fhir_source(path: str | Path) -> bool:
    """Cheap sniff: a folder with FHIR files, an .ndjson file, or a .json(.gz) whose first bytes name a resourceType."""
    p = Path(path)
    try:
        if p.is_dir():
            return any(sniff(f) in ("ndjson", "bundle") for f in _candidates(p)[:20])
        return p.is_file() and sniff(p) in ("ndjson", "bundle")
    except NotFhirError:
        return False


def _candidates(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.name.lower().endswith(_SUFFIXES))


def input_files(source: str | Path, exclude: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """The FHIR files under ``source`` (Patient NDJSON first; none under ``exclude``) and notes on what was skipped.

    Fails fast (NotFhirError naming the file) on a file that is not FHIR, rather than halfway through a run.
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"FHIR source {src} does not exist")
    files = [src] if src.is_file() else _candidates(src)
    if exclude is not None:
        skip = Path(exclude).resolve()
        files = [f for f in files if skip not in f.resolve().parents]
    out, notes = [], []
    for f in files:
        kind = sniff(f)
        if kind == "export-meta":
            notes.append(f"{f.name}: bulk-export manifest/log, not data; skipped")
            continue
        if kind is None:
            raise NotFhirError(f"{f}: not FHIR: expected an NDJSON file of resources (one JSON object with "
                               f"\"resourceType\" per line) or a JSON Bundle/resource; the first bytes are "
                               f"{_head(f, 60)!r}")
        out.append(f)
    if not out:
        raise NotFhirError(f"{src}: no FHIR files found (expected *.ndjson[.gz] or *.json[.gz] Bundles)")

    def patients_first(f: Path) -> tuple[int, str]:
        return (0 if is_ndjson(f) and b'"resourceType":"Patient"' in _head(f, 200).replace(b" ", b"") else 1,
                str(f))
    return sorted(out, key=patients_first), notes


def read_ndjson(path: Path) -> Iterator[Item]:
    """One Item per non-blank line; a line that is not a JSON object becomes an Item with an error."""
    loads = orjson.loads
    with _open(path) as f:
        for n, line in enumerate(f, 1):
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


def read_bundle(path: Path) -> tuple[dict[str, tuple[str, str]], list[Item]]:
    """A Bundle's entries (Patients first, so their subjects are known) and its fullUrl -> (type, id) map.

    A file holding one resource that is not a Bundle gives that resource as entry 0.
    """
    with _open(path) as f:
        data = f.read()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return {}, [Item(None, "file", f"malformed JSON: {e}")]
    if type(doc) is not dict or "resourceType" not in doc:
        raise NotFhirError(f"{path}: not FHIR: expected a JSON object with a resourceType (a Bundle or a resource)")
    if doc["resourceType"] != "Bundle":
        return {}, [Item(doc, "0")]
    if doc.get("type") not in _BUNDLE_TYPES:
        raise NotFhirError(f"{path}: Bundle.type {doc.get('type')!r} is not a Bundle type "
                           f"(expected one of {sorted(_BUNDLE_TYPES)})")
    urls: dict[str, tuple[str, str]] = {}
    patients, others = [], []
    for i, entry in enumerate(doc.get("entry") or ()):
        res = entry.get("resource") if type(entry) is dict else None
        if type(res) is not dict:
            others.append(Item(None, f"entry[{i}]", "bundle entry without a resource"))
            continue
        rt, rid = res.get("resourceType"), res.get("id")
        url = entry.get("fullUrl")
        if isinstance(url, str) and isinstance(rt, str) and isinstance(rid, str):
            urls[url] = (rt, rid)
        (patients if rt == "Patient" else others).append(Item(res, f"entry[{i}]"))
    return urls, patients + others


def resolve(ref: object, urls: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(type, id) a reference points at, from ``urn:uuid:<id>`` (a fullUrl), ``Type/id`` or an absolute URL."""
    if type(ref) is not str or not ref:
        return None
    hit = urls.get(ref)
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

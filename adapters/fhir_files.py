"""Which files of a FHIR source are FHIR: names taken, a cheap sniff of the first bytes, bulk-export manifests and
hidden files skipped and listed, and one clear error for a file that is not FHIR at all.

Read before any resource is parsed (:func:`input_files`), so a bad file fails the run at once, naming it.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import orjson

_SUFFIXES = (".ndjson", ".ndjson.gz", ".json", ".json.gz", ".jsonl", ".jsonl.gz")


class NotFhirError(ValueError):
    """A file that is not FHIR at all (named in the message, with what was expected)."""


#: What breaks a compressed stream part-way: truncation (EOFError), a bad CRC or header (BadGzipFile, an
#: OSError), corrupt deflate data (zlib.error).
_STREAM_ERRORS = (EOFError, OSError, zlib.error)


def _head(path: Path, n: int = 4096) -> bytes:
    """The first ``n`` bytes (decompressed); a truncated gzip gives what it holds (the run reports the break)."""
    try:
        with open(path, "rb") as f:
            if not path.name.endswith(".gz"):
                return f.read(n)
            raw = f.read(1 << 16)
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, n)
    except _STREAM_ERRORS as e:
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


def has_fhir_name(path: str | Path) -> bool:
    """Whether ``path`` is a file named like FHIR input (.ndjson/.jsonl/.json, optionally .gz)."""
    p = Path(path)
    return p.is_file() and p.name.lower().endswith(_SUFFIXES)


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


_EXPECTED = "expected a Bundle, a single resource with resourceType, or NDJSON of resources"
_TAKEN = "*.ndjson, *.jsonl or *.json, each optionally .gz"


def not_fhir(path: Path) -> NotFhirError:
    """The error for a file that is not FHIR: what was expected and what the file holds."""
    if not path.name.lower().endswith(_SUFFIXES):
        found = f"a file whose name the reader does not take ({_TAKEN})"
    else:
        head = _head(path)
        text = head.lstrip()
        where = ""
        if is_ndjson(path) and text:
            text, where = text.split(b"\n", 1)[0], " on line 1"
        try:
            if len(head) < 4096 or is_ndjson(path):      # the whole file, or its first line: parse it
                orjson.loads(text)
            json_ok = True
        except orjson.JSONDecodeError:
            json_ok = False
        if not text:
            found = "an empty file"
        elif not json_ok or text[:1] not in b"{[":
            found = f"text that is not JSON{where} (first bytes {text[:40]!r})"
        elif text[:1] == b"[":
            found = f"a JSON array{where}"
        else:
            found = f"a JSON object without resourceType{where}"
    return NotFhirError(f"{path}: not FHIR ({_EXPECTED}; found {found})")


def _why_skipped(rel: Path) -> str | None:
    """Why a file in a source folder is not read (None: it is read)."""
    if any(part.startswith(".") for part in rel.parts):
        return "hidden (a name starting with '.')"
    if not rel.name.lower().endswith(_SUFFIXES):
        return f"name not {_TAKEN}"
    return None


def input_files(source: str | Path, exclude: str | Path | None = None
                ) -> tuple[list[Path], list[str], list[dict[str, str]]]:
    """The FHIR files under ``source`` (Patient NDJSON first; none under ``exclude``), notes, and the files skipped.

    Fails fast (NotFhirError naming the file) on a file that is not FHIR, rather than halfway through a run.
    Files whose names the reader does not take (``Condition.ndjson~``, ``notes.txt``), hidden files (``._x.ndjson``
    from macOS archives, anything under a dot-folder) and bulk-export manifests/logs are skipped and listed as
    ``{"file": path under source, "reason": ...}``.
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"FHIR source {src} does not exist")
    skipped: list[dict[str, str]] = []
    if src.is_file():
        files = [src]
    else:
        every = sorted(f for f in src.rglob("*") if f.is_file())
        if exclude is not None:
            skip = Path(exclude).resolve()
            every = [f for f in every if skip not in f.resolve().parents]
        why = {f: _why_skipped(f.relative_to(src)) for f in every}
        files = [f for f in every if why[f] is None]
        skipped = [{"file": str(f.relative_to(src)), "reason": why[f]} for f in every if why[f] is not None]
    out, notes = [], []
    for f in files:
        kind = sniff(f)
        if kind == "export-meta":
            notes.append(f"{f.name}: bulk-export manifest/log, not data; skipped")
            skipped.append({"file": str(f.relative_to(src)) if f != src else f.name,
                            "reason": "bulk-export manifest/log, not data"})
            continue
        if kind is None:
            raise not_fhir(f)
        out.append(f)
    if not out:
        raise NotFhirError(f"{src}: no FHIR files found ({_EXPECTED} in files named {_TAKEN}"
                           f"{f'; {len(skipped)} other files skipped' if skipped else ''})")

    def patients_first(f: Path) -> tuple[int, str]:
        return (0 if is_ndjson(f) and b'"resourceType":"Patient"' in _head(f, 200).replace(b" ", b"") else 1,
                str(f))
    return sorted(out, key=patients_first), notes, skipped

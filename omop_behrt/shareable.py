"""`omop-behrt check-shareable`: find anything patient-level in a folder meant to leave the site.

DESIGN.md, "What may leave a site": model directories, reports, coverage lists, benchmark tables and logs hold
aggregates only, every count below ``min_count`` suppressed, no person's rows, ids, predictions or serialised
text. :func:`check_shareable` scans a model directory, a report folder, a coverage ``report.json`` or any
folder and returns one :class:`Finding` (file, what, why) per problem:

- data files: inside a model directory or a report any ``.npz/.npy/.parquet/.csv/.arrow/...`` file; anywhere,
  tables with per-person columns (subject_id, person_id, patient ids, dates of birth), arrays, and files that
  cannot be inspected (``.pt/.ckpt/.pkl/.db/.duckdb/...``) or are of no expected kind;
- JSON (and safetensors metadata): per-person keys (subject_id, person_id, person, patient, predictions,
  y_true/y_score arrays...), counts of persons in 1..min_count-1, tokens (``tokens.json``) or listed codes
  (coverage lists) seen in fewer than ``min_count`` persons, curves with fewer than ``min_count`` persons a step;
- JSON that says ``"shareable": false`` of itself (e.g. a coverage report written with --show-rare-codes);
- HTML: the per-person marker ``<meta name="omop-behrt-per-person">`` that the report writes when a person's
  record was asked for, and person ids in the text; text and logs: person ids.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

#: the smallest count of persons a shareable output shows
MIN_COUNT = 10


def suppressed(min_count: int = MIN_COUNT) -> str:
    """How a shareable output shows a count below ``min_count``: ``"<10"``."""
    return f"<{min_count}"


def shown_count(n: int, min_count: int = MIN_COUNT) -> "int | str":
    """``n`` as a shareable output shows it: ``"<10"`` for 1..min_count-1, else the number (0 says nothing)."""
    return suppressed(min_count) if 0 < n < min_count else int(n)


def count_text(v: "int | str") -> str:
    """A count for a page or a console: ``2,674``, or a suppressed count (``<10``) as it is."""
    return f"{v:,}" if isinstance(v, int) else str(v)
#: keys whose integer values count persons (or rows of persons)
COUNT_KEYS = frozenset({"rows", "persons", "patients", "positives", "negatives", "n", "n_train", "train_positives",
                        "aps_patients", "auroc_patients", "subjects"})
_COUNT_SUFFIXES = ("_persons", "_patients", "_positives", "_subjects")
#: keys holding a person's identity or per-person rows, whatever their value
_ID_KEYS = frozenset({"subject_id", "subject_ids", "person_id", "person_ids", "patient_id", "patient_ids", "person",
                      "patient", "subject", "mrn", "test_predictions", "predictions"})
#: keys that are per-person when they hold a string or a list (a date of birth, one outcome per row)
_ROW_KEYS = frozenset({"y", "y_true", "y_score", "y_pred", "y_prob", "labels", "birth_date", "birth_datetime",
                       "date_of_birth", "dob", "death_date", "index_dates", "prediction_time"})
#: table columns that make a table per-person
PERSON_COLUMNS = frozenset({"subject_id", "person_id", "patient_id", "patient", "person", "mrn",
                            "person_source_value", "birth_date", "birth_datetime", "date_of_birth", "dob",
                            "year_of_birth", "death_date", "death_datetime"})
_PERSON_COUNT_KEYS = ("persons", "n_persons", "person_count", "patients", "subjects")
_CODE_KEYS = ("code", "token", "concept_id", "source_code", "concept_code")
_TABLES = (".parquet", ".csv", ".tsv", ".csv.gz", ".tsv.gz", ".arrow", ".feather", ".ipc")
_ARRAYS = (".npz", ".npy")
_OPAQUE = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".db", ".duckdb", ".sqlite", ".sqlite3", ".h5",
           ".hdf5", ".bin", ".ndjson", ".jsonl", ".ndjson.gz", ".json.gz", ".gz", ".zip", ".tar", ".wal")
_FINE = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".pdf")
_TEXT = (".txt", ".md", ".log", ".rst")
_ID_TEXT = re.compile(r"\b(?:person|patient|subject)(?:[ _-]?id)?\s*[:#=]?\s*(\d+)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """One patient-level thing found: the file (relative to the checked path), what it is, why it matters."""

    file: str
    what: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.what} ({self.why})"


def shareable_files(path: Path) -> list[Path]:
    """The files :func:`check_shareable` looks at: ``path`` itself, or every file under it (links included)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"check-shareable: {path} does not exist")
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_symlink() or p.is_file())


def _suffix(p: Path, kinds: tuple[str, ...]) -> bool:
    return p.name.lower().endswith(kinds)


def _container(p: Path, root: Path) -> str | None:
    """'model directory' or 'report' when ``p`` lies in one (at or under ``root``), else None."""
    for d in [p.parent, *p.parent.parents]:
        if (d / "config.json").exists() and ((d / "model.safetensors").exists() or (d / "tokens.json").exists()):
            return "model directory"
        if (d / "report.html").exists() or (d / "results.json").exists():
            return "report"
        if d == root or root not in d.parents:
            return None
    return None


def _is_count(key: str, under_counts: bool) -> bool:
    return under_counts or key in COUNT_KEYS or key.endswith(_COUNT_SUFFIXES)


def _json_findings(obj, min_count: int, where: str = "") -> list[tuple[str, str]]:
    """(what, why) for each per-person key, small count, rare listed code or per-person curve in a JSON value."""
    from omop_behrt.evaluation.metrics import curves_problem
    out: list[tuple[str, str]] = []

    def walk(o, path: str, under_counts: bool) -> None:
        if isinstance(o, dict):
            if isinstance(o.get("tokens"), dict) and all(isinstance(v, dict) and "persons" in v
                                                          for v in list(o["tokens"].values())[:50]):
                rare = [t for t, v in o["tokens"].items() if isinstance(v.get("persons"), int)
                        and 0 < v["persons"] < min_count]
                if rare:
                    out.append((f"{len(rare)} token{'s' * (len(rare) != 1)} seen in fewer than {min_count} persons",
                                f"at {path or '/'}tokens: " + ", ".join(rare[:5]) + (" ..." if len(rare) > 5 else "")))
                o = {k: v for k, v in o.items() if k != "tokens"}       # its counts are checked just above
            if o.get("shareable") is False:
                out.append(("marked not shareable", f"at {path or '/'}shareable: false (written with an option "
                                                     f"that exposes patient-level detail)"))
            if "curves" in o:
                why = curves_problem(o, min_count)
                if why:
                    out.append(("per-person curve", f"at {path or '/'}curves: {why}"))
            for k, v in o.items():
                here = f"{path}{k}/"
                key = str(k).lower()
                if key in _ID_KEYS and v not in (None, False, [], {}, ""):
                    out.append((f"per-person key {k!r}", f"at {here[:-1]}: {_preview(v)}"))
                    continue
                if key in _ROW_KEYS and (isinstance(v, str) or (isinstance(v, list) and len(v) > 1)):
                    out.append((f"per-person values under {k!r}", f"at {here[:-1]}: {_preview(v)}"))
                    continue
                if isinstance(v, int) and not isinstance(v, bool) and _is_count(key, under_counts) \
                        and 0 < v < min_count:
                    out.append(("count below min_count", f"at {here[:-1]}: {v} (< {min_count}); show it as "
                                                         f"<{min_count}"))
                    continue
                walk(v, here, key in ("attrition", "n"))
        elif isinstance(o, list):
            rows = [r for r in o if isinstance(r, dict) and any(c in r for c in _CODE_KEYS)]
            bad = [_rare_code(r, min_count) for r in rows]
            bad = [b for b in bad if b]
            if bad:
                out.append((f"{len(bad)} listed code{'s' * (len(bad) != 1)} at {path[:-1] or '/'} not shown to be "
                            f"seen in >= {min_count} persons", "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")))
            listed = {id(r) for r in rows}
            for i, v in enumerate(o):
                if id(v) not in listed:
                    walk(v, f"{path}{i}/", under_counts)
                else:
                    walk({k: x for k, x in v.items() if k not in _PERSON_COUNT_KEYS and k != "events"},
                         f"{path}{i}/", False)

    walk(obj, where, False)
    return out


def _rare_code(row: dict, min_count: int) -> str | None:
    """Why a listed code (a dict with a code key) may be seen in fewer than ``min_count`` persons, else None."""
    code = next(str(row[c]) for c in _CODE_KEYS if c in row)
    persons = next((row[k] for k in _PERSON_COUNT_KEYS if isinstance(row.get(k), int)), None)
    if persons is not None:
        return f"{code} seen in {persons} persons" if persons < min_count else None
    events = next((row[k] for k in ("events", "count", "n") if isinstance(row.get(k), int)), None)
    if events is not None and events < min_count:
        return f"{code} in {events} events (so fewer than {min_count} persons)"
    return f"{code} listed without a person count"


def _preview(v) -> str:
    text = json.dumps(v, default=str)
    n = f" ({len(v)} values)" if isinstance(v, (list, dict)) else ""
    return (text[:60] + "..." if len(text) > 60 else text) + n


def _table_columns(p: Path) -> tuple[list[str], dict[str, list]]:
    """Column names of a table file, and the values of its person-count columns (for the min_count check)."""
    import pyarrow as pa
    name = p.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq
        cols = pq.read_schema(p).names
        read = lambda c: pq.read_table(p, columns=c)  # noqa: E731
    elif name.endswith((".arrow", ".feather", ".ipc")):
        import pyarrow.feather as feather
        t = feather.read_table(p)
        cols, read = t.column_names, (lambda c: t.select(c))
    else:
        import pyarrow.csv as pacsv
        delim = "\t" if ".tsv" in name else ","
        t = pacsv.read_csv(p, parse_options=pacsv.ParseOptions(delimiter=delim))
        cols, read = t.column_names, (lambda c: t.select(c))
    counts = [c for c in cols if c.lower() in _PERSON_COUNT_KEYS or c.lower().endswith(_COUNT_SUFFIXES)]
    t = read(counts) if counts else pa.table({})
    return cols, {c: t[c].to_pylist() for c in counts}


def _safetensors_metadata(p: Path) -> dict:
    """The ``__metadata__`` of a safetensors header (strings; JSON ones decoded)."""
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(min(n, 100_000_000)))
    meta = header.get("__metadata__") or {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def _file_findings(p: Path, root: Path, min_count: int) -> list[tuple[str, str]]:
    """(what, why) for one file."""
    if p.is_symlink():
        return [("a link", f"points to {p.resolve()}; not followed: copy the file itself or leave it out")]
    if p.stat().st_size == 0:
        return []
    inside = _container(p, root)
    if _suffix(p, _FINE):
        return []
    if _suffix(p, (".json",)):
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            return [("unreadable JSON", f"{e}: cannot be shown to hold aggregates only")]
        return _json_findings(obj, min_count)
    if _suffix(p, (".safetensors",)):
        try:
            return _json_findings(_safetensors_metadata(p), min_count, "__metadata__/")
        except (OSError, ValueError, struct.error) as e:
            return [("unreadable safetensors header", str(e))]
    if _suffix(p, (".html", ".htm")):
        page = p.read_text(encoding="utf-8", errors="replace")
        out = []
        m = re.search(r"<meta[^>]*name=[\"']omop-behrt-per-person[\"'][^>]*>", page, re.IGNORECASE)
        if m:
            content = re.search(r"content=[\"']([^\"']*)", m.group(0))
            out.append(("per-person section in the page", (content.group(1) if content else m.group(0)) +
                        "; written on request (--example-person): keep this report inside the site"))
        text = re.sub(r"<[^>]+>", " ", re.sub(r"data:[a-z/+]+;base64,[A-Za-z0-9+/=]+", "", page))
        ids = sorted(set(_ID_TEXT.findall(text)), key=int)
        if ids and not m:
            out.append(("person ids in the text", "ids " + ", ".join(ids[:5])))
        return out
    if _suffix(p, _TEXT):
        ids = sorted(set(_ID_TEXT.findall(p.read_text(encoding="utf-8", errors="replace"))), key=int)
        return [("person ids in the text", "ids " + ", ".join(ids[:5]))] if ids else []
    if _suffix(p, _TABLES):
        try:
            cols, counts = _table_columns(p)
        except Exception as e:  # noqa: BLE001 - any reader error: the file cannot be shown to be aggregate
            return [("unreadable data file", f"{type(e).__name__}: {str(e)[:120]}")]
        per_person = [c for c in cols if c.lower() in PERSON_COLUMNS]
        if per_person:
            return [("per-person table", f"columns {', '.join(per_person)}: one row per person or event")]
        rare = {c: sum(1 for v in vs if isinstance(v, int) and 0 < v < min_count) for c, vs in counts.items()}
        if any(rare.values()):
            return [("count below min_count", ", ".join(f"{n} rows with {c} < {min_count}"
                                                         for c, n in rare.items() if n))]
        if inside:
            return [("data file", f"a table in a {inside}, which holds none (caches belong in a work directory)")]
        return []
    if _suffix(p, _ARRAYS):
        import numpy as np
        try:
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files) if hasattr(z, "files") else []
        except Exception as e:  # noqa: BLE001 - unreadable arrays cannot be shown to be aggregate
            return [("unreadable array file", f"{type(e).__name__}: {str(e)[:120]}")]
        ids = [n for n in names if n.lower() in PERSON_COLUMNS]
        where = f" in a {inside}" if inside else ""
        if ids:
            return [("per-person arrays", f"arrays {', '.join(ids)}{where}: one value per person "
                                          f"(training caches belong in a work directory)")]
        return [("array data", f"arrays {', '.join(names[:6]) or '(one)'}{where}: cannot be shown to be aggregate")]
    if _suffix(p, _OPAQUE):
        return [("data file that cannot be inspected", f"{p.suffix} may hold rows of persons")]
    return [("unexpected kind of file", f"{p.suffix or 'no suffix'}: not one of JSON, HTML, images, text, "
                                        f"safetensors or aggregate tables")]


def check_shareable(path: str | Path, min_count: int = MIN_COUNT) -> list[Finding]:
    """Everything patient-level found under ``path`` (a folder or one file); empty when it may leave the site."""
    root = Path(path)
    files = shareable_files(root)
    base = root if root.is_dir() else root.parent
    out = []
    for p in files:
        rel = p.relative_to(base).as_posix()
        out += [Finding(rel, what, why) for what, why in _file_findings(p, base, min_count)]
    return out

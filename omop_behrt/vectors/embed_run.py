"""The work directory of an embedding run: what it records of its inputs, and the checks a resume makes.

    <work>/embed_run.json     the run's fingerprint (source, index rows, model, settings)
    <work>/events, tokens     the censored extraction and its tokens (per person: site-internal)
    <work>/visits.parquet     the cohort's visits, sorted by person (per person: site-internal)
    <work>/chunks             each finished chunk's vectors
    <work>/.embed.lock        held while a run uses the directory

A resume must continue the same run: every input that changes the vectors is compared, and a fresh run clears
only what an embedding run wrote (a folder holding anything else is refused, never emptied).

Shards (``embed --shard I/N``): shard I of N takes the index rows whose person hash (splitmix64 of the int64
subject_id read as uint64, :func:`person_hash`; pure numpy, so any engine or process computes the same) mod N
is I. All entries of one person fall in one shard, and the N shards together are exactly the unsharded cohort.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from omop_behrt.db.database import is_cdm_source
from omop_behrt.events import EventDir, write_json


Shard = tuple[int, int]


def parse_shard(text: str | Shard | None) -> Shard | None:
    """``"I/N"`` (or ``(I, N)``) with 0 <= I < N -> (I, N); None stays None; anything else is one clear error."""
    if text is None:
        return None
    try:
        i, n = (text.split("/") if isinstance(text, str) else text)
        i, n = int(i), int(n)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be I/N (this process's shard I of N, 0 <= I < N, e.g. 0/2), got {text!r}"
                         ) from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be I/N with N >= 1 and 0 <= I < N (e.g. 0/2 and 1/2), got {i}/{n}")
    return i, n


def person_hash(subject_id: np.ndarray) -> np.ndarray:
    """splitmix64 of each subject_id (int64 bits as uint64): a stable, well-mixed uint64 per person."""
    z = np.asarray(subject_id, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def in_shard(subject_id: np.ndarray, shard: Shard | None) -> np.ndarray:
    """Which subject ids belong to ``shard`` (person hash mod N == I); all of them when ``shard`` is None."""
    subject_id = np.asarray(subject_id, dtype=np.int64)
    if shard is None:
        return np.ones(len(subject_id), dtype=bool)
    i, n = shard
    return person_hash(subject_id) % np.uint64(n) == np.uint64(i)


def shard_text(shard: Shard | None) -> str | None:
    """``"I/N"`` as the fingerprint and provenance record it (None for an unsharded run)."""
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def index_hash(index: pa.Table) -> str:
    """sha256 over the index rows in order (cohort_definition_id, subject_id, index_date in µs)."""
    h = hashlib.sha256()
    for name in ("cohort_definition_id", "subject_id", "index_date"):
        col = index[name].cast(pa.timestamp("us")).cast(pa.int64()) if name == "index_date" else \
            index[name].cast(pa.int64())
        h.update(name.encode())
        h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False), dtype="<i8").tobytes())
    return h.hexdigest()


def source_fingerprint(source, cdm_schema: str | None = None, vocab_schema: str | None = None) -> str:
    """What the vectors are read from: an event directory by its manifest's hash, a CDM by its description."""
    if isinstance(source, EventDir) or not is_cdm_source(source):
        path = source.path if isinstance(source, EventDir) else Path(source)
        manifest = path / "manifest.json"
        text = manifest.read_bytes() if manifest.exists() else b""
        return f"event directory {path.resolve()} manifest sha256 {hashlib.sha256(text).hexdigest()[:16]}"
    from omop_behrt.db.database import _redact
    return f"OMOP CDM {_redact(str(source))} cdm_schema={cdm_schema} vocab_schema={vocab_schema}"


def run_fingerprint(source, index: pa.Table, model_id: str, *, pooling: str, inclusive: bool, precision: str,
                    chunk_persons: int, cdm_schema: str | None = None, vocab_schema: str | None = None,
                    fallback: bool = True, vocab_cdm=None, shard: Shard | None = None,
                    batch_tokens: int | None = None, exact: bool = False) -> dict:
    """Every input that changes an embedding run's vectors; a resume must find the same values.

    ``index`` is the run's own rows (a shard's, for a sharded run); the shard is recorded beside them (absent
    for an unsharded run, so an unsharded work directory of an earlier version still resumes). ``batch_tokens``
    and ``exact`` (fixed-shape batches, :func:`omop_behrt.vectors.embed.fixed_shape_plan`) set the last bits.
    """
    fp = {"source": source_fingerprint(source, cdm_schema, vocab_schema), "index_sha256": index_hash(index),
          "index_rows": index.num_rows, "model_id": model_id, "pooling": pooling, "inclusive": bool(inclusive),
          "precision": precision, "chunk_persons": int(chunk_persons), "fallback": bool(fallback)}
    if vocab_cdm is not None:
        fp["vocab_cdm"] = source_fingerprint(vocab_cdm, None, vocab_schema)
    if shard is not None:
        fp["shard"] = shard_text(shard)
    if batch_tokens is not None:
        fp["batch_tokens"] = int(batch_tokens)
    if exact:
        fp["batch_shapes"] = "fixed"
    return fp


RUN_FILE = "embed_run.json"
LOCK_FILE = ".embed.lock"


def check_resume(work: Path, fingerprint: dict) -> None:
    """Refuse to resume another run's work: say what differs (or that there is nothing to resume)."""
    saved_file = work / RUN_FILE
    if not saved_file.exists():
        empty = not work.exists() or not any(p.name != LOCK_FILE for p in work.iterdir())
        what = "is empty" if empty else f"has no {RUN_FILE}"
        raise ValueError(f"cannot resume: work directory {work} {what} (no embedding run was started there); "
                         f"run without --resume to start one")
    saved = json.loads(saved_file.read_text())
    now = dict(fingerprint, **({} if "shard" in fingerprint or "shard" not in saved else {"shard": None}))
    diff = [f"{k}: was {saved.get(k)!r}, now {v!r}" for k, v in now.items() if saved.get(k) != v]
    if diff:
        raise ValueError(f"cannot resume the embedding run in {work}: its inputs differ ("
                         + "; ".join(diff) + "); run without --resume (or use another --work-dir) to start afresh")


_OURS = {"events", "tokens", "visits.parquet", "chunks", RUN_FILE, LOCK_FILE}


def refuse_foreign(work: Path) -> None:
    """A fresh run clears its work directory: refuse one that holds anything an embedding run did not write."""
    if not work.is_dir():
        return
    other = sorted(p.name for p in work.iterdir() if p.name not in _OURS and not p.name.startswith(f".{RUN_FILE}."))
    if other:
        raise ValueError(f"work directory {work} holds files that are not an embedding run's ({', '.join(other[:5])}); "
                         f"give an empty folder or one used only by `omop-behrt embed --work-dir`")


def start_run(work: Path, fingerprint: dict) -> None:
    """A fresh run in ``work``: forget any earlier run's events, tokens and chunks, then record the inputs.

    A folder that holds anything else (an event directory, say) is refused rather than cleared.
    """
    refuse_foreign(work)
    for name in _OURS - {LOCK_FILE}:
        p = work / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    write_json(fingerprint, work / RUN_FILE)

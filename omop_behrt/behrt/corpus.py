"""The pretraining corpus: an event directory tokenised into train/val shards in chunks of persons.

Memory stays flat in the number of persons: the events are mapped to token shards on disk (DuckDB sorts and
spills), the vocabulary is counted by DuckDB over those shards, and the sequences are tokenised a chunk of
persons at a time (a range of subject ids read back with row-group pruning) and appended as ``part-*.npz``
shards (:class:`omop_behrt.behrt.shards.SequenceWriter`). What is in memory at once: one chunk, and the sorted
subject ids (8 bytes a person). The result is the same, array for array, as tokenising everything at once.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from tqdm.auto import tqdm

from omop_behrt.behrt.model import BehrtConfig
from omop_behrt.behrt.shards import SequenceWriter
from omop_behrt.behrt.tokenizer import TOKEN_COLUMNS, TokenVocabulary, tokenize, write_visits
from omop_behrt.db.database import sql_literal
from omop_behrt.events import EventDir

#: persons tokenised at once: a chunk's token rows, events and sequences are what prepare holds in memory
CHUNK_PERSONS = 20_000
#: DuckDB's memory limit while preparing (it spills sorts and distinct pairs to the work directory beyond it)
DUCKDB_MEMORY = "1GB"


def token_table(events: EventDir, vocab: str) -> tuple[pa.Table, dict]:
    """Events -> token table (subject_id, time, visit_id, domain, code, token) and mapping coverage figures,
    in memory (small data; :func:`prepare` writes them to shards instead)."""
    from omop_behrt.vocab.mapping import map_events
    res = map_events(events, vocab=vocab, progress=False)
    report = res.report.as_dict() if res.report is not None else {}
    return res.tokens, {k: report.get(k) for k in ("vocab", "pct_mapped")}


def validation_mask(subject_id: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """True for validation persons: a seeded hash of subject_id (stable whatever else is in the data)."""
    with np.errstate(over="ignore"):
        z = subject_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
        z = (z ^ (z >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(29))
    return (z % np.uint64(1_000_000)).astype(np.float64) / 1e6 < val_fraction


def _sorted_copy(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    """``query`` written to one Parquet file ordered by subject_id (so a range of persons prunes row groups)."""
    con.execute(f"COPY ({query} ORDER BY subject_id) TO {sql_literal(str(path))} "
                "(FORMAT parquet, ROW_GROUP_SIZE 100000)").fetchall()


def _continued(init_vocab: TokenVocabulary, local: TokenVocabulary,
               shards: ds.Dataset) -> tuple[TokenVocabulary, dict, pa.Table]:
    """:func:`omop_behrt.behrt.continued.continue_vocabulary` over token shards: the extended vocabulary, its
    counts and coverage figures, and the fallback mapping each chunk's tokens go through."""
    from omop_behrt.behrt.continued import extend_vocabulary
    from omop_behrt.vocab.fallback import coverage, fallback_map, token_counts, unknown_tokens
    tv = extend_vocabulary(init_vocab, local)
    new = pa.array(tv.tokens[len(init_vocab):], pa.string())
    from_ancestor = fallback_map(new, init_vocab).num_rows
    counts = token_counts(shards)                    # one pass over the token rows for both coverages
    distinct = counts.column("token")
    init_cov = coverage(None, init_vocab, fallback_map(unknown_tokens(distinct, init_vocab), init_vocab),
                        counts=counts)
    mapping = fallback_map(unknown_tokens(distinct, tv), tv)
    cov = coverage(None, tv, mapping, counts=counts)
    return tv, {"init_tokens": len(init_vocab), "added_tokens": len(new), "added_from_ancestor": from_ancestor,
                "added_from_mean": len(new) - from_ancestor, "init_coverage": init_cov, "coverage": cov}, mapping


def prepare(events: str | Path | EventDir, vocab: str, data: Path, config: BehrtConfig, *, min_count: int = 10,
            val_fraction: float = 0.1, seed: int = 0, age_unit: str = "year",
            init_vocab: TokenVocabulary | None = None, chunk_persons: int = CHUNK_PERSONS,
            memory_limit: str = DUCKDB_MEMORY, progress: bool = False) -> tuple[TokenVocabulary, dict]:
    """Tokenise once: vocabulary from training persons only; train/val shards, tokens and summary to ``data``.

    ``data`` is in the work directory: the sequences are per person. The summary holds aggregates only
    (counts, first and last year), as it goes into the shareable metadata.json. ``init_vocab`` (continued
    pretraining): the vocabulary is that one extended by the local tokens it lacks
    (:func:`omop_behrt.behrt.continued.extend_vocabulary`), and a local token in neither falls back to its nearest
    ancestor the vocabulary knows. ``chunk_persons`` bounds what is tokenised at once (it never changes the
    result); ``memory_limit`` bounds DuckDB's share.
    """
    from omop_behrt.vocab.mapping import map_events
    if chunk_persons < 1:
        raise ValueError(f"chunk_persons must be >= 1, got {chunk_persons}")
    ev = events if isinstance(events, EventDir) else EventDir.open(events)
    staging = data / "staging"                        # mapped tokens, visits and persons sorted by person
    shutil.rmtree(staging, ignore_errors=True)
    # by subject only: each chunk reads a subject range (few row groups); its tokenize orders the rows itself
    res = map_events(ev, vocab=vocab, out=staging, progress=False, memory_limit=memory_limit, sort="subject",
                     columns=TOKEN_COLUMNS)
    report = res.report.as_dict() if res.report is not None else {}
    coverage = {k: report.get(k) for k in ("vocab", "pct_mapped")}
    files = sorted((staging / "tokens").glob("part-*.parquet"))
    con = duckdb.connect()
    try:
        for setting in (f"memory_limit = {sql_literal(memory_limit)}",
                        f"temp_directory = {sql_literal(str(staging / 'spill'))}", "preserve_insertion_order = false"):
            con.execute(f"SET {setting}").fetchall()
        if files:
            con.read_parquet([str(f) for f in files]).create_view("t")
        else:
            con.execute("CREATE VIEW t AS SELECT NULL::BIGINT AS subject_id, NULL::TIMESTAMP AS time, "
                        "NULL::BIGINT AS visit_id, NULL::VARCHAR AS token WHERE false").fetchall()
        ids = con.sql("SELECT DISTINCT subject_id FROM t ORDER BY subject_id").fetchnumpy()["subject_id"]
        ids = np.asarray(ids, np.int64)
        is_val = validation_mask(ids, val_fraction, seed)
        if not (~is_val).any():
            raise ValueError(f"{ev.path}: no training persons with a mapped event under vocabulary {vocab!r} "
                             f"({len(ids)} persons in all, val_fraction {val_fraction})")
        con.register("train_ids", pa.table({"subject_id": ids[~is_val]}))
        con.execute("CREATE VIEW train_tokens AS SELECT subject_id, token FROM t SEMI JOIN train_ids USING "
                    "(subject_id)").fetchall()
        tv = TokenVocabulary.count(con, "train_tokens", min_count=min_count, time_tokens=config.time_tokens)
        extension, mapping = None, None
        if init_vocab is not None:
            tv, extension, mapping = _continued(init_vocab, tv, ds.dataset([str(f) for f in files]))
        write_visits(con, ev, staging / "visits.parquet")
        _sorted_copy(con, f"SELECT subject_id, birth_date, sex FROM read_parquet("
                     f"{sql_literal(str(ev.path / 'persons.parquet'))})", staging / "persons.parquet")
        counts = _tokenise_chunks(con, ids, staging, tv, data, config, age_unit, val_fraction, seed, mapping,
                                  chunk_persons, progress)
        [(token_rows, first_year, last_year)] = con.execute(
            "SELECT count(*), min(year(time)), max(year(time)) FROM t").fetchall()
    finally:
        con.close()
    shutil.rmtree(staging, ignore_errors=True)
    summary = {"events_dir": str(ev.path), "vocab": vocab, "min_count": min_count, "vocab_size": len(tv),
               "train_persons": counts["train_persons"], "val_persons": counts["val_persons"],
               "val_fraction": val_fraction, "train_tokens": counts["train_tokens"], "token_rows": int(token_rows),
               "first_year": first_year, "last_year": last_year,
               "cdm_version": ev.manifest.get("cdm_version"), "adapter": ev.manifest.get("adapter"),
               "vocabulary_version": ev.manifest.get("vocabulary_version"), "age_unit": age_unit,
               "censored_at": (ev.manifest.get("fingerprint") or {}).get("index_dates"),
               "coverage": coverage}
    if extension is not None:
        summary["vocab_extension"] = extension
    tv.save(data / "tokens.json")
    (data / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return tv, summary


def _tokenise_chunks(con: duckdb.DuckDBPyConnection, ids: np.ndarray, staging: Path, tv: TokenVocabulary,
                     data: Path, config: BehrtConfig, age_unit: str, val_fraction: float, seed: int,
                     mapping: pa.Table | None, chunk_persons: int, progress: bool) -> dict[str, int]:
    """Each chunk of persons (a subject-id range) tokenised and split into the train and val shards."""
    from omop_behrt.vocab.fallback import replace
    writers = {"train": SequenceWriter(data / "train"), "val": SequenceWriter(data / "val")}
    counts = {"train_persons": 0, "val_persons": 0, "train_tokens": 0}
    visits, persons = (sql_literal(str(staging / f)) for f in ("visits.parquet", "persons.parquet"))
    meta: dict = {}
    for start in tqdm(range(0, len(ids), chunk_persons), desc="tokenise", unit="chunk", disable=not progress,
                      leave=False):
        lo, hi = int(ids[start]), int(ids[min(len(ids), start + chunk_persons) - 1])
        rng = [lo, hi]
        tokens = con.sql("SELECT subject_id, time, visit_id, token FROM t WHERE subject_id BETWEEN ? AND ?",
                         params=rng).to_arrow_table()
        if mapping is not None:
            tokens = replace(tokens, mapping)
        seqs = tokenize(tokens, con.sql(f"SELECT * FROM read_parquet({persons}) WHERE subject_id BETWEEN ? AND ?",
                                        params=rng).to_arrow_table(), tv,
                        max_len=config.max_len, age_unit=age_unit, time_tokens=config.time_tokens,
                        visits=con.sql(f"SELECT * FROM read_parquet({visits}) WHERE subject_id BETWEEN ? AND ?",
                                       params=rng).to_arrow_table())
        del tokens
        val = validation_mask(seqs.subject_id, val_fraction, seed)
        train = seqs.select(np.flatnonzero(~val))
        writers["train"].write(train)
        writers["val"].write(seqs.select(np.flatnonzero(val)))
        counts["train_persons"] += len(train)
        counts["val_persons"] += int(val.sum())
        counts["train_tokens"] += int(train.offsets[-1])
        meta = seqs.meta
    for w in writers.values():
        w.close(meta)
    return counts

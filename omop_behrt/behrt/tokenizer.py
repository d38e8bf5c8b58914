"""The tokenizer: token vocabulary and visit stream -> flat int arrays (BEHRT's CLS / SEP / age / segment / position).

Per sequence (a person, or a person as of an index date), visits in time order:

    [CLS] codes of visit 1 [SEP] codes of visit 2 [SEP] ...

Every token carries an age (years at the visit; months as an option), a segment (0/1 alternating per visit)
and a position (the visit index). [CLS] shares the first visit's attributes, each [SEP] those of the visit it
closes. Too-long histories keep the most recent visits within ``max_len``. The work is one DuckDB query over
the whole token table (sort once, window functions), never a per-person Python loop.

With ``time_tokens`` (CEHR-BERT's artificial time tokens, Pang et al. 2021), the gap between two visits' starts
goes in as one token before the later visit: ``[W0]``..``[W3]`` (weeks, under 28 days), ``[M1]``..``[M11]``
(months of 30 days, under 360 days), ``[LT]`` (longer). It carries the age, segment and position of the visit
it precedes; the first kept visit has none. The vocabulary holds them right after the specials
(``TokenVocabulary.build(..., time_tokens=True)``); a vocabulary without them tokenises exactly as before.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from omop_behrt.db.database import sql_literal

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: the token-table columns :func:`tokenize` reads (what a caller needs to keep of map_events' output)
TOKEN_COLUMNS = ("subject_id", "time", "visit_id", "token")
#: the visit columns :func:`tokenize` reads for the PLOS label (:func:`visit_table`)
VISIT_COLUMNS = ("subject_id", "visit_id", "time", "end_time")
PAD, UNK, CLS, SEP, MASK = range(5)
#: CEHR-BERT's time-gap tokens (weeks under 28 days, months under 360, longer): structural, counted in no person
TIME_TOKENS = ("[W0]", "[W1]", "[W2]", "[W3]") + tuple(f"[M{m}]" for m in range(1, 12)) + ("[LT]",)


@dataclass
class TokenVocabulary:
    """Token -> id, specials first, then tokens seen in >= ``min_count`` distinct persons (the rest are [UNK])."""

    tokens: list[str]                       # id -> token
    counts: list[int]                       # id -> distinct persons (0 for specials)
    min_count: int = 10
    persons: int = 0                        # persons the vocabulary was built from
    _index: pa.Array | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, tokens: pa.Table, min_count: int = 10, time_tokens: bool = False) -> "TokenVocabulary":
        """Count distinct persons per token (DuckDB) and keep tokens seen in >= ``min_count`` of them.

        ``time_tokens``: :data:`TIME_TOKENS` follow the specials (count 0 like them: they name no code).
        """
        con = duckdb.connect()
        try:
            con.register("vocab_tokens", tokens.select(["subject_id", "token"]))
            return cls.count(con, "vocab_tokens", min_count=min_count, time_tokens=time_tokens)
        finally:
            con.close()

    @classmethod
    def count(cls, con: duckdb.DuckDBPyConnection, view: str, min_count: int = 10, time_tokens: bool = False
              ) -> "TokenVocabulary":
        """:meth:`build` over a view (subject_id, token) of ``con``: a table, or Parquet token shards DuckDB streams
        (distinct (person, token) pairs, spilled to disk when they outgrow its memory limit)."""
        if not view.isidentifier():
            raise ValueError(f"view must be a plain identifier, got {view!r}")
        fixed = list(SPECIALS) + (list(TIME_TOKENS) if time_tokens else [])
        rows = con.execute(f"""
            SELECT token, count(*) AS n FROM (SELECT DISTINCT subject_id, token FROM "{view}"
                                               WHERE token IS NOT NULL AND token NOT IN (SELECT unnest(?)))
            GROUP BY token HAVING count(*) >= ? ORDER BY n DESC, token""", [fixed, min_count]).fetchall()
        persons = con.execute(f'SELECT count(DISTINCT subject_id) FROM "{view}"').fetchall()[0][0]
        return cls(fixed + [r[0] for r in rows], [0] * len(fixed) + [int(r[1]) for r in rows],
                   min_count=min_count, persons=int(persons))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> pa.Array:
        if self._index is None:
            self._index = pa.array(self.tokens, pa.string())
        return self._index

    def encode(self, tokens: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """Token strings -> int32 ids, unknown or null -> [UNK] (vectorised, an Arrow hash lookup)."""
        if isinstance(tokens, list):
            tokens = pa.array(tokens, pa.string())
        ids = pc.index_in(tokens, value_set=self.index).fill_null(UNK)
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        return ids.to_numpy(zero_copy_only=False).astype(np.int32)

    @property
    def has_time_tokens(self) -> bool:
        """Whether :data:`TIME_TOKENS` follow the specials (the vocabulary of a model trained with them)."""
        return tuple(self.tokens[len(SPECIALS):len(SPECIALS) + len(TIME_TOKENS)]) == TIME_TOKENS

    def decode(self, ids: np.ndarray) -> list[str]:
        """Ids -> token strings."""
        return [self.tokens[int(i)] for i in ids]

    @property
    def sha256(self) -> str:
        """A hash of the id -> token mapping (identifies the vocabulary a model was trained with)."""
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {"min_count": self.min_count, "persons": self.persons, "sha256": self.sha256,
                "specials": list(SPECIALS),
                "tokens": {t: {"id": i, "persons": c} for i, (t, c) in enumerate(zip(self.tokens, self.counts))}}

    def save(self, path: str | Path) -> Path:
        """Write ``tokens.json`` (a directory gets ``<dir>/tokens.json``), atomically."""
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokens.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1, ensure_ascii=False))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TokenVocabulary":
        """Read ``tokens.json`` (or ``<dir>/tokens.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokens.json"
        d = json.loads(path.read_text())
        items = sorted(d["tokens"].items(), key=lambda kv: kv[1]["id"])
        if [v["id"] for _, v in items] != list(range(len(items))) or tuple(k for k, _ in items[:5]) != SPECIALS:
            raise ValueError(f"{path}: token ids must be 0..n-1 with {SPECIALS} first")
        counts, min_count = [int(v["persons"]) for _, v in items], int(d["min_count"])
        rare = sum(c < min_count for (k, _), c in zip(items[len(SPECIALS):], counts[len(SPECIALS):])
                   if k not in TIME_TOKENS)
        if rare:                                # only an edited file can hold them: build() drops them
            raise ValueError(f"{path}: {rare} tokens have a person count below min_count {min_count}; "
                             "a token vocabulary holds only tokens seen in at least min_count persons")
        return cls([k for k, _ in items], counts, min_count=min_count, persons=int(d.get("persons", 0)))


@dataclass
class Sequences:
    """Tokenised sequences as flat arrays + offsets: sequence i is ``[offsets[i], offsets[i+1])``."""

    offsets: np.ndarray                     # int64 (n + 1)
    input_ids: np.ndarray                   # int32 per token
    ages: np.ndarray                        # int16 per token (years or months at the visit)
    segments: np.ndarray                    # int8 per token (0/1 alternating per visit)
    positions: np.ndarray                   # int16 per token (visit index)
    subject_id: np.ndarray                  # int64 per sequence
    index_time: np.ndarray                  # int64 µs per sequence (the cutoff; INT64_MIN when none)
    sex: np.ndarray                         # int8 per sequence (0 unknown, 1 F, 2 M)
    plos: np.ndarray                        # int8 per sequence: some visit lasted > plos_days (Med-BERT PLOS)
    meta: dict = field(default_factory=dict)

    ARRAYS = ("offsets", "input_ids", "ages", "segments", "positions", "subject_id", "index_time", "sex", "plos")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return {"input_ids": self.input_ids[a:b], "ages": self.ages[a:b], "segments": self.segments[a:b],
                "positions": self.positions[a:b], "sex": self.sex[i], "plos": self.plos[i]}

    def select(self, idx: np.ndarray) -> "Sequences":
        """A subset of the sequences (in the order of ``idx``), vectorised."""
        idx = np.asarray(idx, dtype=np.int64)
        starts = np.asarray(self.offsets[idx])              # O(len(idx)), also on memory-mapped shards
        lens = np.asarray(self.offsets[idx + 1]) - starts
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        take = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1])
        return Sequences(offsets, self.input_ids[take], self.ages[take], self.segments[take], self.positions[take],
                         self.subject_id[idx], self.index_time[idx], self.sex[idx], self.plos[idx], dict(self.meta))

    def save(self, path: str | Path, shard_sequences: int = 200_000) -> Path:
        """Write ``part-*.npz`` shards (no pickles) and ``sequences.json`` into a directory."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("part-*.npz"):
            old.unlink()
        n_parts = max(1, -(-len(self) // shard_sequences))
        for k in range(n_parts):
            part = self.select(np.arange(k * shard_sequences, min(len(self), (k + 1) * shard_sequences)))
            tmp = path / f"part-{k:05d}.tmp.npz"
            np.savez(tmp, **{a: getattr(part, a) for a in self.ARRAYS})
            os.replace(tmp, path / f"part-{k:05d}.npz")
        meta = dict(self.meta, sequences=len(self), tokens=int(self.offsets[-1]), parts=n_parts)
        (path / "sequences.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Sequences":
        """Read what :meth:`save` wrote."""
        path = Path(path)
        parts = [np.load(f, allow_pickle=False) for f in sorted(path.glob("part-*.npz"))]
        if not parts:
            raise FileNotFoundError(f"{path}: no part-*.npz tokenised shards")
        arrays = {a: [p[a] for p in parts] for a in cls.ARRAYS}
        starts = np.cumsum([0] + [o[-1] for o in arrays["offsets"][:-1]])
        arrays["offsets"] = np.concatenate([arrays["offsets"][0][:1]] + [o[1:] + s for o, s in
                                                                          zip(arrays["offsets"], starts)])
        out = {a: (v if a == "offsets" else np.concatenate(v)) for a, v in arrays.items()}
        return cls(**out, meta=json.loads((path / "sequences.json").read_text()))


def visit_table(events: Any) -> pa.Table:
    """Visit events (subject_id, visit_id, time, end_time) of an event directory, for the PLOS label."""
    dset = events.events() if hasattr(events, "events") else events
    return dset.to_table(columns=list(VISIT_COLUMNS), filter=ds.field("domain") == "visit")


def write_visits(con: duckdb.DuckDBPyConnection, events: Any, path: Path, subjects: Any = None) -> None:
    """:func:`visit_table` of an event directory (``subjects``' visits only, when given) to one Parquet file ordered
    by person, so that a range of persons reads few row groups: read once per run, not once per chunk."""
    files = [str(f) for f in events.event_files()]
    query = ("SELECT NULL::BIGINT subject_id, NULL::BIGINT visit_id, NULL::TIMESTAMP time, NULL::TIMESTAMP end_time "
             "WHERE false")
    if files:
        where = "domain = 'visit'"
        if subjects is not None:
            con.register("visit_subjects", pa.table({"subject_id": pa.array(subjects, pa.int64())}))
            where += " AND subject_id IN (SELECT subject_id FROM visit_subjects)"
        query = (f"SELECT {', '.join(VISIT_COLUMNS)} FROM read_parquet([{', '.join(map(sql_literal, files))}]) "
                 f"WHERE {where} ORDER BY subject_id, time, visit_id")
    try:
        con.execute(f"COPY ({query}) TO {sql_literal(str(path))} (FORMAT parquet, ROW_GROUP_SIZE 100000)").fetchall()
    finally:
        if files and subjects is not None:
            con.unregister("visit_subjects")


def tokenize(tokens: pa.Table, persons: pa.Table, vocab: TokenVocabulary, *, max_len: int = 256,
             age_unit: str = "year", cutoff: pa.Table | None = None, inclusive: bool = False,
             visits: pa.Table | None = None, plos_days: float = 7.0, dedupe: bool = True,
             time_tokens: bool | None = None) -> Sequences:
    """Token table (subject_id, time, visit_id, token) -> :class:`Sequences`, one query, deterministic.

    ``cutoff`` (subject_id, index_time): one sequence per row, seeing only events strictly before index_time
    (``inclusive``: at or before); a row with no earlier event gives a ``[CLS]``-only sequence. Without it,
    one sequence per person present in ``tokens``. ``visits`` (subject_id, visit_id, time, end_time; see
    :func:`visit_table`) gives the PLOS label: some kept visit lasted more than ``plos_days``. Within a visit,
    codes are ordered by id (order inside a visit carries no meaning) and, with ``dedupe``, kept once.
    ``time_tokens``: a time-gap token before every visit but the first kept (see the module docstring); None
    means "when the vocabulary holds them", so a model's own vocabulary decides.
    """
    if max_len < 3:
        raise ValueError(f"max_len must be >= 3 ([CLS] code [SEP]), got {max_len}")
    if age_unit not in ("year", "month"):
        raise ValueError(f"age_unit must be 'year' or 'month', got {age_unit!r}")
    if time_tokens is None:
        time_tokens = vocab.has_time_tokens
    elif time_tokens and not vocab.has_time_tokens:
        raise ValueError("time_tokens=True needs a vocabulary holding them after the specials: build it with "
                         "TokenVocabulary.build(..., time_tokens=True)")
    tt = int(bool(time_tokens))
    con = duckdb.connect()
    t = tokens.select(["subject_id", "time", "visit_id"]).append_column(
        "tok", pa.array(vocab.encode(tokens.column("token")), pa.int32()))
    con.register("t", t)
    con.register("p", persons.select(["subject_id", "birth_date", "sex"]))
    if cutoff is not None:
        con.register("c", cutoff.select(["subject_id", "index_time"]).cast(
            pa.schema([("subject_id", pa.int64()), ("index_time", pa.timestamp("us"))])))
        seqs = ("SELECT row_number() OVER (ORDER BY subject_id, index_time) - 1 AS seq, subject_id, index_time "
                "FROM (SELECT DISTINCT subject_id, index_time FROM c)")
        before = "AND t.time <= s.index_time" if inclusive else "AND t.time < s.index_time"
    else:
        seqs = ("SELECT row_number() OVER (ORDER BY subject_id) - 1 AS seq, subject_id, "
                "NULL::TIMESTAMP AS index_time FROM (SELECT DISTINCT subject_id FROM t)")
        before = ""
    vis = visits if visits is not None else pa.table({"subject_id": pa.array([], pa.int64()),
                                                       "visit_id": pa.array([], pa.int64()),
                                                       "time": pa.array([], pa.timestamp("us")),
                                                       "end_time": pa.array([], pa.timestamp("us"))})
    con.register("v", vis.select(["subject_id", "visit_id", "time", "end_time"]))
    per_day = 365.25 if age_unit == "year" else 30.4375
    cap = max_len - 2
    group = "GROUP BY ALL" if dedupe else ""
    age = (f"greatest(0, floor(coalesce(date_diff('day', p.birth_date, {{t}}::DATE), 0) / {per_day}))::INT")
    # time tokens: days between this kept visit's start and the previous one's -> [W0..3] [M1..11] [LT]
    gap = (",\n               date_diff('day', (lag(vstart) OVER (PARTITION BY seq ORDER BY vi))::DATE, vstart::DATE)"
           " AS gap") if tt else ""
    time_rows = (f"""
      UNION ALL SELECT seq, pre, {len(SPECIALS)} + CASE WHEN gap < 28 THEN gap // 7
                 WHEN gap < 360 THEN 3 + greatest(1, gap // 30) ELSE {len(TIME_TOKENS) - 1} END, age, k % 2, k
        FROM kv WHERE k > 0""") if tt else ""
    con.execute(f"""
    CREATE TEMP TABLE seqs AS {seqs};
    CREATE TEMP TABLE ev AS
      SELECT s.seq, t.visit_id, t.tok, {"min(t.time)" if dedupe else "t.time"} AS time
      FROM t JOIN seqs s USING (subject_id) WHERE t.time IS NOT NULL {before} {group};
    CREATE TEMP TABLE kv AS
      WITH vis AS (
        SELECT seq, visit_id, min(time) AS vstart, least(count(*), {cap}) AS n,
               row_number() OVER (PARTITION BY seq ORDER BY min(time), visit_id) AS vi
        FROM ev GROUP BY seq, visit_id),
      suf AS (
        SELECT *, sum(n + 1 + {tt}) OVER (PARTITION BY seq ORDER BY vi DESC ROWS UNBOUNDED PRECEDING) AS suf
        FROM vis),
      kept AS (
        SELECT seq, visit_id, vstart, n, row_number() OVER (PARTITION BY seq ORDER BY vi) - 1 AS k,
               coalesce(sum(n + 1 + {tt}) OVER (PARTITION BY seq ORDER BY vi
                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS pre{gap}
        FROM suf WHERE suf + 1 - {tt} <= {max_len})
      SELECT kept.*, {age.format(t="kept.vstart")} AS age, s.subject_id
      FROM kept JOIN seqs s USING (seq) LEFT JOIN p ON p.subject_id = s.subject_id;
    """)
    rows = con.sql(f"""
      SELECT seq, pos, tok, age, seg, position FROM (
        SELECT e.seq, 1 + kv.pre + row_number() OVER (PARTITION BY e.seq, e.visit_id ORDER BY e.tok, e.time) - 1
                 AS pos, e.tok, kv.age, kv.k % 2 AS seg, kv.k AS position, kv.pre, kv.n
        FROM ev e JOIN kv USING (seq, visit_id)) WHERE pos <= pre + n
      UNION ALL SELECT seq, 1 + pre + n, {SEP}, age, k % 2, k FROM kv{time_rows}
      UNION ALL SELECT s.seq, 0, {CLS},
             coalesce(kv.age, {age.format(t="s.index_time")}), 0, 0
        FROM seqs s LEFT JOIN kv ON kv.seq = s.seq AND kv.k = 0 LEFT JOIN p ON p.subject_id = s.subject_id
      ORDER BY seq, pos""").to_arrow_table()
    per_seq = con.sql(f"""
      SELECT s.seq, s.subject_id, coalesce(epoch_us(s.index_time), {np.iinfo(np.int64).min}) AS index_time,
             coalesce(CASE p.sex WHEN 'F' THEN 1 WHEN 'M' THEN 2 END, 0) AS sex,
             coalesce(max(CASE WHEN v.end_time - v.time > INTERVAL ({plos_days * 86400}) SECOND THEN 1 ELSE 0 END),
                      0) AS plos
      FROM seqs s LEFT JOIN p ON p.subject_id = s.subject_id
        LEFT JOIN kv ON kv.seq = s.seq
        LEFT JOIN v ON v.subject_id = s.subject_id AND v.visit_id = kv.visit_id
      GROUP BY ALL ORDER BY s.seq""").to_arrow_table()
    con.close()
    seq = rows.column("seq").to_numpy()
    n_seq = per_seq.num_rows
    offsets = np.concatenate([[0], np.cumsum(np.bincount(seq, minlength=n_seq))]).astype(np.int64)
    col = lambda tab, name, dtype: tab.column(name).to_numpy().astype(dtype)  # noqa: E731
    meta = {"max_len": max_len, "age_unit": age_unit, "vocab_sha256": vocab.sha256, "vocab_size": len(vocab),
            "dedupe": dedupe, "plos_days": plos_days, "cutoff": cutoff is not None, "inclusive": inclusive}
    if tt:
        meta["time_tokens"] = True
    return Sequences(offsets, col(rows, "tok", np.int32), col(rows, "age", np.int16), col(rows, "seg", np.int8),
                     col(rows, "position", np.int16), col(per_seq, "subject_id", np.int64),
                     col(per_seq, "index_time", np.int64), col(per_seq, "sex", np.int8),
                     col(per_seq, "plos", np.int8), meta)

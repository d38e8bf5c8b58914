"""Patient vectors as of an index date from a BEHRT model: the streaming, resumable embedding run (the
scikit-learn face is :mod:`omop_behrt.vectors.embedder`, the text encoder's run :mod:`omop_behrt.vectors.embed_text`).

The path of one run: index dates -> events extracted with censoring in the CDM's SQL (only events before each
person's index date leave the database) -> the model's vocabulary -> tokens cut at each entry's own index
time -> encoder -> pooled vector. Work goes chunk by chunk (fixed memory whatever the cohort size, length-
sorted batches inside a chunk); each finished chunk is saved, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch
from tqdm.auto import tqdm

from omop_behrt.tasks.cohorts import check_index, index_dates_from_frame
from omop_behrt.db.database import is_cdm_source as _is_cdm, quiet
from omop_behrt.vectors.embed_run import (LOCK_FILE, Shard, check_resume, in_shard, parse_shard, refuse_foreign,
                                          run_fingerprint,
                        start_run)
from omop_behrt.events import EventDir, subjects_filter
from omop_behrt.lock import exclusive_lock
from omop_behrt.behrt.model import pool

from omop_behrt.choices import POOLINGS


#: Fixed-shape batches pad each sequence to the next multiple of this many tokens (at most the model's max_len).
SHAPE_STEP = 16
#: Tokens of a batch on CPU (at most): a CPU is as fast on 4k-token batches as on 16k ones, and smaller batches
#: mix fewer lengths (padding 1.02-1.10x of the real tokens against 1.09-1.30x at 16k, bench/RESULTS.md).
CPU_BATCH_TOKENS = 4096
#: Rows of a fixed-shape batch (at most): each length's last batch is filled with copies, so few rows waste
#: little on small cohorts and shards (on CPU 16 rows cost what length-bucketed batches do).
FIXED_ROWS = 16


def fixed_shape_plan(lengths: np.ndarray, batch_tokens: int, max_len: int, step: int = SHAPE_STEP,
                     rows_cap: int = FIXED_ROWS) -> list[tuple[np.ndarray, int, int]]:
    """Batches whose shape depends only on their sequences' own lengths: ``(idx, T, n)``, the first n of idx
    real (the rest copies of the last), with T the length rounded
    up to ``step`` (capped at ``max_len``) and every batch of that T padded to the same row count.

    A CPU or GPU kernel may pick its algorithm by the matrix shape (a (B*T, H) product with few rows takes
    another path), so the last bits of a person's vector could depend on who shared its batch. With every batch
    of one T holding B(T) = max(1, min(max(batch_tokens, max_len) // T, rows_cap)) rows (the last filled with
    copies, whose outputs are dropped), a vector is a function of the person alone: the same in any cohort,
    chunk or shard.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    budget = max(int(batch_tokens), int(max_len))
    shape = np.minimum(-(-np.maximum(lengths, 1) // step) * step, max(int(max_len), int(lengths.max(initial=1))))
    plan = []
    for T in np.unique(shape):
        rows = np.flatnonzero(shape == T)
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        B = max(1, min(budget // int(T), rows_cap))
        for start in range(0, len(rows), B):
            idx = rows[start:start + B]
            plan.append((np.concatenate([idx, np.full(B - len(idx), idx[-1])]), int(T), len(idx)))
    return plan


def _padded(batch: dict[str, torch.Tensor], T: int) -> dict[str, torch.Tensor]:
    """A collated batch padded along the token axis to ``T`` (PAD ids, masked out), as collate pads."""
    pad = T - batch["input_ids"].shape[1]
    if pad <= 0:
        return batch
    return {k: torch.nn.functional.pad(v, (0, pad)) if v.dim() == 2 else v for k, v in batch.items()}


def packed_stream(seqs, batch_tokens: int, device: torch.device, extras: dict[str, int], max_len: int):
    """``(idx, n, batch)`` of packed rows (:mod:`omop_behrt.behrt.packing`): best-fit rows as wide as the longest
    sequence (rounded up to 16), ``batch_tokens // width`` rows a batch; ``idx`` in the batch's pooling order."""
    from omop_behrt.behrt.packing import packed_device_batches
    return ((idx, len(idx), b) for idx, b in packed_device_batches(seqs, batch_tokens, device, extras,
                                                                    max_len=max_len))


@torch.inference_mode()
def embed_sequences(model, seqs, *, pooling: str = "cls", batch_tokens: int = 16_384,
                    device: str | torch.device = "cpu", precision: str = "auto",
                    progress: bool = False, fixed_shapes: bool = False, packed: bool = False) -> np.ndarray:
    """Vectors (n, hidden) float32 for tokenised sequences, in their order; batches are length-sorted.

    The model's forward applies its own attention mask (causal by visit for ``objective="next_visit"``). For a
    next-visit model the natural pooling is ``last_visit``: every token of the last visit has seen the whole
    history, and its closing [SEP] is the state trained to predict what comes next; ``mean`` works but mixes in
    states that saw only a prefix; ``cls`` (its [CLS] saw the first visit only, its pooler is untrained) warns.

    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU: exact and deterministic), ``bf16`` (also on
    CPU: several times faster where the CPU has bf16 matrix units, vectors differ slightly), ``fp32``.

    ``fixed_shapes``: batches from :func:`fixed_shape_plan`, so each vector is bit-for-bit independent of the
    other sequences (what lets shards of a cohort reproduce one run); costs some padding, mostly on small inputs.

    ``packed`` (ignored under ``fixed_shapes``): several sequences per row under a block-diagonal attention mask
    (:func:`packed_stream`); the same vectors up to float rounding (< 1e-5), no padding to speak of.
    """
    from omop_behrt.behrt.batches import collate, device_batches
    from omop_behrt.behrt.packing import packed_vectors
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32; got {precision!r}")
    if pooling == "cls" and getattr(model.config, "objective", "mlm") == "next_visit":
        import warnings
        warnings.warn("pooling 'cls' of a next_visit model: its [CLS] sees the first visit only and its pooler "
                      "was never trained; use pooling 'last_visit'", UserWarning, stacklevel=2)
    device = torch.device(device)
    out = np.zeros((len(seqs), model.config.hidden), dtype=np.float32)
    extras = model.config.extras
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if fixed_shapes:
        plan = fixed_shape_plan(seqs.lengths, batch_tokens, model.config.max_len)
        stream = ((idx, n, {k: v.to(device, non_blocking=True)
                            for k, v in _padded(collate(seqs, idx, extras), T).items()}) for idx, T, n in plan)
    elif packed:
        stream = packed_stream(seqs, batch_tokens, device, extras, model.config.max_len)
    else:
        stream = ((idx, len(idx), b) for idx, b in device_batches(seqs, batch_tokens, device, extras))
    with tqdm(total=len(seqs), desc="embed", unit="patient", disable=not progress, leave=False) as bar:
        for idx, n, b in stream:
            b.pop("plos", None)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if "seq_index" in b:           # packed: the last block only where the pooling reads
                    vec = packed_vectors(model, b, pooling)
                elif pooling == "cls" and not fixed_shapes:   # the last block at [CLS] only (not bit-exact
                    # across shards: a (B, H) product of few rows may take another kernel path, tests/test_embed_shard)
                    first = torch.zeros_like(b["attention_mask"])
                    first[:, 0] = True
                    vec = model.pool(model(**b, keep=first)[:, None])
                else:
                    vec = pool(model, model(**b), b, pooling)
            out[idx[:n]] = vec[:n].float().cpu().numpy()     # the filler rows' outputs are dropped
            bar.update(n)
    return out


def _match_rows(seq_subject: np.ndarray, seq_time: np.ndarray, row_subject: np.ndarray,
                row_time: np.ndarray) -> np.ndarray:
    """For each (subject, cut) row, the index of the sequence with the same key (vectorised search)."""
    key = np.dtype([("s", np.int64), ("t", np.int64)])
    seq_key = np.empty(len(seq_subject), key)
    seq_key["s"], seq_key["t"] = seq_subject, seq_time
    row_key = np.empty(len(row_subject), key)
    row_key["s"], row_key["t"] = row_subject, row_time
    order = np.argsort(seq_key, order=("s", "t"))
    if len(order) == 0:
        if len(row_key):
            raise RuntimeError("internal error: an index row has no tokenised sequence")
        return np.zeros(0, dtype=np.int64)
    pos = np.searchsorted(seq_key[order], row_key)
    found = order[np.minimum(pos, len(order) - 1)]
    if not (seq_key[found] == row_key).all():
        raise RuntimeError("internal error: an index row has no tokenised sequence")
    return found


def model_checksum(model_dir: str | Path) -> str:
    """The model's id (sha256 over config, tokens and weights): what the registry, provenance and resume record."""
    from omop_behrt.behrt.model import model_id
    return model_id(model_dir)


@dataclass
class EmbeddingResult:
    """Vectors aligned with the index rows, and who had no history before the index date."""

    index: pa.Table
    vectors: np.ndarray
    has_history: np.ndarray
    provenance: dict = field(default_factory=dict)


def censored_events(source, index: pa.Table, work: Path, *, inclusive: bool = False, cdm_schema: str | None = None,
                    vocab_schema: str | None = None, resume: bool = False, progress: bool = False,
                    notes: bool = False):
    """The events an index table may see, and the CDM (or None) vocabularies may consult.

    A CDM source is extracted into ``work/events`` with the censoring in its SQL (only events before each
    subject's latest index date leave the database); an event directory is used as it is (the tokenizer's
    cut-off then does the censoring). ``notes``: a CDM's note table is extracted too, censored the same way.
    """
    from omop_behrt.adapters import omop
    if not _is_cdm(source):
        return (source if isinstance(source, EventDir) else EventDir.open(source)), None
    opts = omop.ExtractOptions(index_dates=index.select(["subject_id", "index_date"]), inclusive=inclusive,
                               notes=notes)
    omop.extract(source, work / "events", cdm_schema=cdm_schema, vocab_schema=vocab_schema, options=opts,
                 resume=resume and (work / "events" / "manifest.json").exists(), progress=progress)
    return EventDir.open(work / "events"), source


def cut_times(index: pa.Table, inclusive: bool = False) -> np.ndarray:
    """Each row's cut (µs): its index date, or the end of that day when events on the day count too."""
    cut = index["index_date"].cast(pa.timestamp("us"))
    if inclusive:
        cut = pc.add(pc.floor_temporal(cut, unit="day"), pa.scalar(86_400_000_000, pa.duration("us")))
    return cut.to_numpy().astype("datetime64[us]").astype(np.int64)


def index_sequences(tokens: pa.Table, persons: pa.Table, visits: pa.Table, model, subject_id: np.ndarray,
                    cut: np.ndarray, *, fallback: bool = True, cdm=None, mapping: pa.Table | None = None):
    """Tokenise each (subject, cut) row with the model's vocabulary; returns (sequences, sequence of each row).

    A token the model lacks falls back to its nearest ancestor the model knows (:mod:`omop_behrt.vocab.fallback`;
    ``cdm``, an OmopCdm or a CDM path/URL, lends concept_ancestor), unless ``fallback=False``; the coverage
    (shares of the rows' events in the model as they are, through the fallback, [UNK]) is in
    ``sequences.meta["coverage"]``. ``mapping``: a fallback mapping already made (coverage then not counted).
    """
    from omop_behrt.vocab.fallback import apply, replace
    from omop_behrt.behrt.tokenizer import tokenize
    cutoff = pa.table({"subject_id": pa.array(subject_id, pa.int64()), "index_time": pa.array(cut, pa.timestamp("us"))})
    if mapping is None:
        tokens, cov, _ = apply(tokens, model.vocab, cdm=cdm, fallback=fallback, cutoff=cutoff)
    else:
        tokens, cov = replace(tokens, mapping), None
    seqs = tokenize(tokens, persons, model.vocab, max_len=model.config.max_len, age_unit=model.config.age_unit,
                    cutoff=cutoff, visits=visits, time_tokens=model.config.time_tokens)
    if cov is not None:
        seqs.meta["coverage"] = cov
    return seqs, _match_rows(seqs.subject_id, seqs.index_time, subject_id, cut)


def embed_cohort(model_dir: str | Path, source, index: pa.Table, *, pooling: str = "cls", inclusive: bool = False,
                 cdm_schema: str | None = None, vocab_schema: str | None = None, batch_tokens: int = 16_384,
                 chunk_persons: int = 20_000, device: str = "auto", work_dir: str | Path | None = None,
                 resume: bool = False, progress: bool = True, precision: str = "auto",
                 model=None, fallback: bool = True, vocab_cdm=None, shard: Shard | str | None = None,
                 exact: bool | None = None) -> EmbeddingResult:
    """Embed every row of ``index`` (cohort_definition_id, subject_id, index_date) with the model at ``model_dir``.

    ``source``: an OMOP CDM (DuckDB file, URL, export folder; censoring then happens in its SQL) or an event
    directory. Tokens are mapped once (sorted by subject, so each chunk reads only its own shards);
    ``work_dir`` keeps the censored events, tokens and finished chunks (``resume=True`` reuses them).
    A code the model never saw falls back to its nearest ancestor the model knows (concept_ancestor of a CDM
    source, or of ``vocab_cdm`` for an event-directory source; ICD prefixes; CALIBER chapters. ``fallback=False``:
    [UNK], exactly as the model was trained); the provenance's ``coverage`` says what share of the cohort's
    persons' events the model covers (only those persons are mapped, whatever else the source holds).

    ``shard=(i, n)`` (or ``"i/n"``): embed only the rows whose person hash mod n is i
    (:func:`omop_behrt.vectors.embed_run.in_shard`); the result holds those rows, and the n shards' vectors are exactly
    the unsharded run's (each person is embedded alone, whatever its batch mates). The work directory, the
    fingerprint and the provenance are the shard's own.

    ``exact`` (default: on for a shard, off otherwise): batches of fixed shapes (:func:`fixed_shape_plan`), so a
    vector is bit-for-bit a function of its person alone, whatever the cohort, chunking or shard; the n shards of
    a cohort then equal one ``exact=True`` run bit for bit. Off, batches are length-bucketed (no filler rows) and
    a vector's last bits (about 1e-7) may depend on its batch mates.
    """
    from omop_behrt.behrt.model import Behrt
    from omop_behrt.behrt.batches import resolve_device
    t0 = time.perf_counter()
    if resume and work_dir is None:
        raise ValueError("resume needs the work directory of the run to continue (--work-dir)")
    shard = parse_shard(shard)
    dev = resolve_device(device)
    exact = shard is not None if exact is None else bool(exact)
    if dev.type != "cuda":
        batch_tokens = min(int(batch_tokens), CPU_BATCH_TOKENS)
    index = check_index(index)
    if shard is not None:
        index = index.filter(pa.array(in_shard(index["subject_id"].to_numpy(), shard)))
    model = model if model is not None else Behrt.load(model_dir, device=dev)
    vocab_name = model.metadata.get("vocab", "source")
    checksum = model_checksum(model_dir) if model_dir else None
    effective = "bf16" if precision == "bf16" or (precision == "auto" and dev.type == "cuda") else "fp32"
    fingerprint = run_fingerprint(source, index, checksum or f"vocab {model.vocab.sha256}", pooling=pooling,
                                  inclusive=inclusive, precision=effective, chunk_persons=chunk_persons,
                                  cdm_schema=cdm_schema, vocab_schema=vocab_schema, fallback=fallback,
                                  vocab_cdm=vocab_cdm if fallback and not _is_cdm(source) else None, shard=shard,
                                  batch_tokens=batch_tokens, exact=exact)
    if index.num_rows == 0:     # an empty cohort, or a shard without entries: nothing to read or run
        return EmbeddingResult(index, np.zeros((0, model.config.hidden), np.float32), np.zeros(0, bool), {
            "model_dir": str(model_dir), "model_checksum": checksum, "run_fingerprint": fingerprint,
            "vocab": vocab_name, "vocab_sha256": model.vocab.sha256, "pooling": pooling, "rows": 0, "embedded": 0,
            "skipped": {"no history before index": 0, "subject not in source": 0}, "seconds": 0.0,
            "device": str(dev), "precision": effective, "fallback": bool(fallback),
            **({"shard": fingerprint["shard"]} if "shard" in fingerprint else {})})
    tmp = None
    if work_dir is None:
        tmp = work_dir = Path(tempfile.mkdtemp(prefix="omop-behrt-embed-"))
    work = Path(work_dir)
    if resume and not work.is_dir():
        check_resume(work, fingerprint)
    if not resume:
        refuse_foreign(work)      # before the lock file goes in
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        if tmp is None:   # one run per work directory at a time
            held.enter_context(exclusive_lock(work / LOCK_FILE, timeout=0, busy=(
                f"work directory {work} is in use by another embedding run; wait for it or use another --work-dir")))
        if resume:
            check_resume(work, fingerprint)
        else:
            start_run(work, fingerprint)
        return _embed_run(model, model_dir, source, index, work, tmp, fingerprint, checksum, vocab_name, dev, t0,
                          pooling=pooling, inclusive=inclusive, cdm_schema=cdm_schema, vocab_schema=vocab_schema,
                          batch_tokens=batch_tokens, chunk_persons=chunk_persons, resume=resume, progress=progress,
                          precision=precision, fallback=fallback, vocab_cdm=vocab_cdm, exact=exact)


def _embed_run(model, model_dir, source, index: pa.Table, work: Path, tmp: Path | None, fingerprint: dict,
               checksum: str | None, vocab_name: str, dev, t0: float, *, pooling: str, inclusive: bool,
               cdm_schema: str | None, vocab_schema: str | None, batch_tokens: int, chunk_persons: int,
               resume: bool, progress: bool, precision: str, fallback: bool, vocab_cdm=None,
               exact: bool = False) -> EmbeddingResult:
    """The chunked run of :func:`embed_cohort` in its (locked, checked) work directory."""
    import duckdb
    from omop_behrt.behrt.tokenizer import TOKEN_COLUMNS, write_visits
    from omop_behrt.vocab.fallback import site_fallback
    from omop_behrt.vocab.mapping import map_events
    try:
        events, cdm = censored_events(source, index, work, inclusive=inclusive, cdm_schema=cdm_schema,
                                      vocab_schema=vocab_schema, resume=resume, progress=progress)
        persons = events.persons()
        token_dir = work / "tokens"
        if not (resume and (token_dir / "complete").exists()):    # shards of an interrupted mapping: redo
            shutil.rmtree(token_dir, ignore_errors=True)
            # an event-directory source holds every person: map only the index's (a shard's, for a shard);
            # sorted by subject only, so that a chunk's subject range lies in few row groups (its tokenize
            # orders its rows itself; the full order cost more than the mapping)
            map_events(events, vocab=vocab_name, cdm=cdm, out=token_dir, progress=False, memory_limit="2GB",
                       subjects=None if cdm is not None else np.unique(index["subject_id"].to_numpy()),
                       sort="subject", columns=TOKEN_COLUMNS)
            (token_dir / "complete").write_text("all token shards written\n")
        visits_file = work / "visits.parquet"         # the cohort's visits, read once (not once per chunk)
        if not (resume and visits_file.exists()):
            con = quiet(duckdb.connect())
            try:
                write_visits(con, events, visits_file, subjects=np.unique(index["subject_id"].to_numpy()))
            finally:
                con.close()
        visits_ds = ds.dataset(str(visits_file), format="parquet")
        tokens_ds = ds.dataset(str(token_dir / "tokens"), format="parquet")
        row_subject = index["subject_id"].to_numpy()
        row_cut = cut_times(index, inclusive)
        t_fb = time.perf_counter()
        mapping, cov = site_fallback(tokens_ds, model.vocab, row_subject, row_cut,
                                     cdm=cdm if cdm is not None else vocab_cdm,
                                     cdm_schema=cdm_schema, vocab_schema=vocab_schema, fallback=fallback)
        cov["seconds"] = round(time.perf_counter() - t_fb, 3)
        subjects = np.unique(row_subject)
        n_chunks = max(1, -(-len(subjects) // chunk_persons))
        vectors = np.zeros((index.num_rows, model.config.hidden), dtype=np.float32)
        has_history = np.zeros(index.num_rows, dtype=bool)
        chunk_dir = work / "chunks"
        chunk_dir.mkdir(exist_ok=True)
        with tqdm(total=index.num_rows, desc="patients", unit="patient", disable=not progress) as bar:
            for k in range(n_chunks):
                chunk_subjects = subjects[k * chunk_persons:(k + 1) * chunk_persons]
                rows = np.flatnonzero(np.isin(row_subject, chunk_subjects))
                done = chunk_dir / f"chunk-{k:05d}.npz"
                if resume and done.exists():
                    saved = np.load(done, allow_pickle=False)
                    vectors[rows], has_history[rows] = saved["vectors"], saved["has_history"]
                    bar.update(len(rows))
                    continue
                mine = subjects_filter(chunk_subjects)      # skips other chunks' row groups
                tokens = tokens_ds.to_table(filter=mine)
                visits = visits_ds.to_table(filter=mine)
                seqs, seq_of_row = index_sequences(tokens, persons, visits, model, row_subject[rows], row_cut[rows],
                                                   mapping=mapping)
                vec = embed_sequences(model, seqs, pooling=pooling, batch_tokens=batch_tokens, device=dev,
                                      precision=precision, fixed_shapes=exact)
                vectors[rows] = vec[seq_of_row]
                has_history[rows] = seqs.lengths[seq_of_row] > 1
                tmp_file = chunk_dir / f"chunk-{k:05d}.{os.getpid()}.tmp.npz"
                np.savez(tmp_file, vectors=vectors[rows], has_history=has_history[rows])
                os.replace(tmp_file, done)
                bar.update(len(rows))
        skipped_unknown = int((~np.isin(row_subject, persons["subject_id"].to_numpy())).sum())
        prov = {"model_dir": str(model_dir), "model_checksum": checksum, "run_fingerprint": fingerprint,
                "vocab": vocab_name, "vocab_sha256": model.vocab.sha256, "pooling": pooling,
                "index_rule": "events on or before the index date" if inclusive else
                "events strictly before the index date",
                "censoring": "extraction SQL" if cdm is not None else "tokenizer cut-off",
                "rows": index.num_rows, "embedded": int(has_history.sum()),
                "skipped": {"no history before index": int((~has_history).sum()) - skipped_unknown,
                            "subject not in source": skipped_unknown},
                "seconds": round(time.perf_counter() - t0, 3), "device": str(dev), "precision": precision,
                "fallback": bool(fallback), "exact": exact, "coverage": cov}
        if "shard" in fingerprint:
            prov["shard"] = fingerprint["shard"]
        return EmbeddingResult(index, vectors, has_history, prov)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _as_index(X) -> pa.Table:
    """Accept a DataFrame / Arrow table with (subject_id, index_date[, cohort_definition_id]) or an (n, 2) array."""
    if isinstance(X, pa.Table) or hasattr(X, "columns"):
        t = index_dates_from_frame(X)
    else:
        if hasattr(X, "toarray"):
            raise TypeError("sparse input is not (subject_id, index_date) rows; pass a DataFrame")
        arr = np.asarray(X)
        if arr.ndim == 1:
            raise ValueError("Expected 2D (subject_id, index_date) rows, got a 1D array. Reshape your data.")
        t = _index_from_array(arr)
    if t.num_rows == 0:
        raise ValueError("X has 0 rows: nothing to embed (expected subject_id, index_date rows)")
    return t


def _index_from_array(arr: np.ndarray) -> pa.Table:
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError("X must be a table with columns subject_id and index_date (a DataFrame, an Arrow "
                         f"table, or an (n, 2) array of subject ids and dates); got shape {arr.shape}")
    return index_dates_from_frame(pa.table({"subject_id": arr[:, 0].astype(np.int64),
                                            "index_date": arr[:, 1].astype("datetime64[us]")}))

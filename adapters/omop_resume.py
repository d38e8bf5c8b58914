"""An extraction's resume check: the fingerprint of every input that changes its rows, recorded in the manifest,
and what a resumed run refuses or removes. Digests only: no person id or date is recoverable from them.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt import __version__
from omop_behrt.adapters.omop_queries import ExtractOptions
from omop_behrt.db.cdm import OmopCdm
from omop_behrt.events import EventDir


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def index_dates_digest(index_dates: pa.Table) -> str:
    """``N subjects, sha256 X`` over each subject's latest index date (the censoring an extraction applies).

    Recorded in the manifest and, through pretraining, in a model's metadata, so a task can tell whether the
    encoder's events were censored at its own index dates (a digest: no person or date is recoverable).
    """
    ix = index_dates.group_by("subject_id").aggregate([("index_date", "max")])
    s = ix["subject_id"].cast(pa.int64()).to_numpy()
    days = ix["index_date_max"].cast(pa.timestamp("us")).cast(pa.date32()).cast(pa.int32())
    d = pc.add(days.cast(pa.int64()), 719_163).fill_null(0).to_numpy()     # date.toordinal(); 0 for none
    order = np.lexsort((d, s))
    return f"{len(s)} subjects, sha256 {_digest(s[order], d[order])}"


def fingerprint(cdm: OmopCdm, options: ExtractOptions) -> dict:
    """Every input that changes an extraction's rows (the domains aside: a resume may add domains)."""
    ids = None
    if options.person_ids is not None:
        a = np.unique(np.asarray(list(options.person_ids), dtype=np.int64))
        shown = a[:10].tolist()
        ids = f"{shown}{' ...' if len(a) > 10 else ''} ({len(a)} ids, sha256 {_digest(a)})"
    ix = None if options.index_dates is None else index_dates_digest(options.index_dates)
    return {"source": cdm.db.description, "cdm_schema": cdm.cdm_schema, "vocab_schema": cdm.vocab_schema,
            "results_schema": cdm.results_schema, "person_ids": ids,
            "cohort": None if options.cohort_id is None else f"{options.cohort_table}:{options.cohort_id}",
            "start": None if options.start is None else str(options.start),
            "end": None if options.end is None else str(options.end),
            "valid_dates": options.window, "after_death_days": int(options.after_death_days),
            "index_dates": ix, "inclusive": bool(options.inclusive),
            "check_duplicates": bool(options.check_duplicates), "version": __version__}


def _check_resume(out: EventDir, manifest: dict, now: dict) -> None:
    """Refuse to resume a run made from other inputs: the message says what differs."""
    was = manifest.get("fingerprint")
    if was is None:
        raise ValueError(f"--resume: {out.path} records no fingerprint of its inputs (an older or foreign "
                         f"extraction), so it cannot be checked to be the same run; run without --resume to "
                         f"start over")
    diff = [f"{k} was {was.get(k)!r}, now {'none' if now[k] is None else repr(now[k])}"
            for k in now if was.get(k) != now[k]]
    if diff:
        raise ValueError(f"--resume: {out.path} was extracted with other inputs: {'; '.join(diff)}; run "
                         f"without --resume to start over (only --domains may differ: a resume adds the "
                         f"domains not yet extracted)")


def _remove_partial(out: EventDir, table: str) -> None:
    """Shards, quarantine and state an interrupted attempt at ``table`` left behind (resume redoes the table)."""
    for f in (list(out.events_dir.glob(f"{table}-*.parquet*")) + list(out.path.glob(f"quarantine-{table}.parquet*"))
              + list(out.path.glob(f".state/visits-{table}.npy*"))):
        f.unlink()


# -- the run ---------------------------------------------------------------------------------------------

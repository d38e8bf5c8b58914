"""OMOP CDM -> MEDS 0.4 from the extraction's own pass (``extract --meds-out``), with or without an event directory.

MEDS only: the streamed event batches are spilled once (lz4, by subject range) instead of becoming event shards,
then sorted bucket by bucket into MEDS shards and swapped in (adapters.meds.write_meds); the persons and manifest
of the run live in a private folder that is removed, its quarantine goes to ``<meds_out>/quarantine.parquet``.
With an event directory too, the sort reads its shards (to_meds): writing the events twice would cost more than
reading them once.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from omop_behrt.adapters import meds
from omop_behrt.adapters.omop import ExtractOptions, ExtractSummary, _extract
from omop_behrt.db.database import Database
from omop_behrt.events import EventDir, writable_dir, write_table


def extract_meds(source: "str | Path | Database", out: str | Path | None, meds_out: str | Path,
                 cdm_schema: str | None, vocab_schema: str | None, results_schema: str | None,
                 options: ExtractOptions, resume: bool, batch_rows: int, rows_per_shard: int,
                 memory_limit: str | None, progress: bool) -> ExtractSummary:
    """Extraction whose events also (``out``) or only (``out=None``) become a MEDS dataset at ``meds_out``.

    MEDS only: the events are spilled once (lz4, private) and sorted into MEDS; no event shard is written or read.
    With ``out`` the event shards are written anyway, so the sort reads them (to_meds) rather than a second copy.
    """
    meds_out = writable_dir(meds_out, "the MEDS folder")
    if out is not None:
        summary = _extract(source, out, cdm_schema, vocab_schema, results_schema, options, resume, batch_rows,
                           rows_per_shard, memory_limit, progress)
        info = meds.to_meds(out, meds_out, Path(out).name, rows_per_shard, memory_limit)
        summary.meds = {**info, "path": str(meds_out)}
        return summary
    if resume:
        raise ValueError("extract --resume needs --out: a MEDS-only extraction keeps no event directory to "
                         "resume from")
    if options.notes:
        raise ValueError("extract --notes needs --out: clinical notes are kept in an event directory, "
                         "which MEDS holds no place for")
    # inside the MEDS folder, named like write_meds's own private folders: a killed run's is removed by the next
    work = meds.private_folder(meds_out, "-events")
    sink = meds.EventTable(work / ".meds_spill", memory_limit)
    try:
        summary = _extract(source, work, cdm_schema, vocab_schema, results_schema, options, resume, batch_rows,
                           rows_per_shard, memory_limit, progress, sink=sink)
        if sink.complete:
            ev = EventDir(work)
            info = meds.write_meds(sink.con, meds_out, persons=ev.persons(), descriptions=ev.descriptions(),
                                   observation_periods=ev.observation_periods(), manifest=ev.manifest,
                                   dataset_name=meds_out.name, rows_per_shard=rows_per_shard,
                                   parts=sink.parts())
        else:       # Spark: the executors wrote event shards
            info = meds.to_meds(work, meds_out, meds_out.name, rows_per_shard, memory_limit)
        # the rows that could not become events, each with a reason, kept beside the dataset (nothing is lost)
        write_table(EventDir(work).quarantine(), meds_out / "quarantine.parquet")
        info["quarantine"] = str(meds_out / "quarantine.parquet")
    finally:
        sink.close()
        shutil.rmtree(work, ignore_errors=True)
    summary.meds = {**info, "path": str(meds_out)}
    return summary

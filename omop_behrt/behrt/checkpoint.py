"""The work directory of a pretraining run: tokenised caches, the checkpoint and the run's fingerprint.

A pretraining run keeps everything that is per person or only needed to resume here, outside the model
directory (which stays shareable):

    <work>/data/train, data/val      tokenised sequences (per person: subject ids, codes, ages)
    <work>/data/summary.json         training data summary (aggregates, copied into metadata.json)
    <work>/data/tokens.json          the token vocabulary, until the model directory is written
    <work>/checkpoint.safetensors    weights, optimizer moments, RNG states, sampler position, the run settings
                                     and their fingerprint (written atomically; no pickles)
    <work>/metrics.jsonl             loss curves so far (the model directory gets them as metrics.json)
    <work>/.lock                     held while a run uses the directory (one run at a time)

The default is ``<out>.work`` beside the model directory. A resume must continue the same run: the
fingerprint of every input that changes the result is stored in the checkpoint and compared on resume.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omop_behrt.lock import exclusive_lock
from omop_behrt.behrt.model import canonical_json

CHECKPOINT = "checkpoint.safetensors"


class ResumeError(ValueError):
    """A resume that cannot continue: no checkpoint, or one written for other inputs or settings."""


def default_work_dir(out: str | Path) -> Path:
    """``<out>.work`` beside the model directory (never inside it: the model directory must stay shareable)."""
    out = Path(out).absolute()
    return out.parent / f"{out.name}.work"


def work_dir_lock(work: Path):
    """One pretraining run per work directory: a second one is refused at once (BlockingIOError)."""
    return exclusive_lock(work / ".lock", 0, f"another pretraining run is using this work directory {work} "
                          "(wait for it, or give another --out / --work-dir)")


# -- fingerprint ------------------------------------------------------------------------------------
def events_fingerprint(events_path: Path) -> str:
    """sha256 over the event directory's manifest (its timing left out) and, per data file, its name, row count
    and per-column statistics (min, max, nulls over all row groups), read from the Parquet footers only.

    Cheap (no data page is read) yet content-sensitive: a re-extraction with other rows changes the counts or
    the statistics. Independent of row order, so the same extraction run again (a database may return rows in
    another order) keeps its fingerprint, and `pretrain --resume` after it is not refused.
    """
    import pyarrow.parquet as pq
    h = hashlib.sha256()
    manifest = events_path / "manifest.json"
    if manifest.exists():
        record = json.loads(manifest.read_text())
        record.get("summary", {}).pop("seconds", None)    # how long it took: two identical extractions differ
        h.update(b"manifest\0" + canonical_json(record))
    files = sorted(events_path.glob("events/*.parquet")) + sorted(
        p for p in (events_path / "persons.parquet", events_path / "observation_periods.parquet") if p.exists())
    for f in files:
        meta = pq.ParquetFile(f).metadata
        stats: dict[str, list] = {}
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                col = group.column(c)
                st, seen = col.statistics, stats.setdefault(col.path_in_schema, [None, None, 0])
                if st is None:
                    continue
                seen[2] += st.null_count or 0
                if st.has_min_max:
                    seen[0] = st.min if seen[0] is None else min(seen[0], st.min)
                    seen[1] = st.max if seen[1] is None else max(seen[1], st.max)
        h.update(f"{f.relative_to(events_path).as_posix()}\0{meta.num_rows}\0".encode()
                 + canonical_json({k: [str(v) for v in vs] for k, vs in sorted(stats.items())}))
    return h.hexdigest()


def fingerprint_differences(then: dict, now: dict) -> list[str]:
    """'key: <then> in the checkpoint, <now> now' for each input that differs (the event hash by name only)."""
    diffs = []
    for k in sorted(set(then) | set(now)):
        a, b = then.get(k), now.get(k)
        if a == b:
            continue
        if k == "events":
            diffs.append("events: the event directory's content changed since the checkpoint was written")
        elif k == "config" and isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"config.{d}" for d in fingerprint_differences(a, b)]
        else:
            diffs.append(f"{k}: {a!r} in the checkpoint, {b!r} now")
    return diffs


def check_resume(work: Path, fingerprint: dict, out: Path) -> dict:
    """The checkpoint's run settings, after checking it exists and continues the run ``fingerprint`` describes."""
    ckpt = work / CHECKPOINT
    if not ckpt.exists():
        old = out / CHECKPOINT
        hint = (f" ({old} was written by an older version without a run fingerprint and cannot be resumed)"
                if old.exists() else "")
        raise ResumeError(f"--resume: no checkpoint in {work}{hint}; run without --resume to start")
    with safe_open(str(ckpt), framework="pt") as f:
        run = json.loads(f.metadata()["state"])["run"]
    if "fingerprint" not in run:
        raise ResumeError(f"--resume: {ckpt} has no run fingerprint (an older version wrote it); "
                          "run without --resume to start again")
    diffs = fingerprint_differences(run["fingerprint"], fingerprint)
    if diffs:
        raise ResumeError(f"--resume: the checkpoint in {work} belongs to another run; " + "; ".join(diffs)
                          + ". Give the same inputs and options as the first run, or run without --resume")
    return run


# -- checkpoint -------------------------------------------------------------------------------------
def rank_rng_states(gen: torch.Generator, world: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Every rank's (torch, masking) RNG states, gathered on all ranks (None in one process): under DDP each rank
    draws its own masks and dropout, so an exact resume restores each rank's own streams."""
    if world <= 1:
        return None
    import torch.distributed as dist
    mine = (torch.get_rng_state(), gen.get_state().cpu())
    out: list = [None] * world
    dist.all_gather_object(out, mine)
    return out


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                    state: dict, ranks: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    """One safetensors file (no pickles): weights, optimizer moments, RNG states (each rank's, from
    :func:`rank_rng_states`, under DDP); the rest as JSON metadata."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for i, s in osd["state"].items():
        for k, v in s.items():
            tensors[f"opt.{i}.{k}"] = v.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.mask"] = gen.get_state()
    for r, (torch_state, mask_state) in enumerate(ranks or ()):
        tensors[f"rng.torch.{r}"], tensors[f"rng.mask.{r}"] = torch_state, mask_state
    if torch.cuda.is_available() and gen.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"state": json.dumps(state), "param_groups": json.dumps(osd["param_groups"])}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                    rank: int = 0) -> dict:
    """Restore what :func:`save_checkpoint` wrote, with this rank's own RNG streams when the checkpoint has them;
    returns the JSON state (step, epoch, batch, run)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    osd = {"state": {}, "param_groups": json.loads(meta["param_groups"])}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            osd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(osd)
    own = f"rng.torch.{rank}" in tensors
    torch.set_rng_state(tensors[f"rng.torch.{rank}" if own else "rng.torch"])
    gen.set_state(tensors[f"rng.mask.{rank}" if own else "rng.mask"].to(gen.get_state().device))
    if "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return json.loads(meta["state"])


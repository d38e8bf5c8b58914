"""Pretraining: BEHRT's masked-LM (+ Med-BERT's prolonged-length-of-stay) on a site's own visit stream, or
CLMBR-style next-visit prediction (``BehrtConfig.objective="next_visit"``: causal by visit, no masking).

    pretrain(events_dir, vocab="source", out=model_dir, config="tiny", epochs=10)

The out directory becomes a shareable model directory: config.json, model.safetensors, tokens.json,
metadata.json and metrics.json (loss curves), nothing per person. Everything per person or only needed to
resume (tokenised sequences, the checkpoint) lives in a work directory, ``<out>.work`` by default (see
:mod:`omop_behrt.behrt.checkpoint`). Checkpoints are written every ``checkpoint_every`` steps, at the end of each
epoch, at the end and on Ctrl-C; ``resume`` continues exactly, after checking it is the same run.
``init`` (``--init MODEL_DIR``) continues another model's pretraining on this site's data, its vocabulary
extended by the site's frequent codes it lacks.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from omop_behrt import __version__
from omop_behrt.behrt.continued import init_model_for, init_weights
from omop_behrt.behrt.checkpoint import (CHECKPOINT, work_dir_lock, check_resume, default_work_dir,
                         events_fingerprint, load_checkpoint, rank_rng_states, save_checkpoint)
from omop_behrt.events import EventDir, writable_dir, write_json
from omop_behrt.behrt.batches import batches, device_batches, next_visit_targets, resolve_device
from omop_behrt.behrt.model import Behrt, BehrtConfig
from omop_behrt.behrt.packing import packed_device_batches, packed_plan, row_width
from omop_behrt.behrt.corpus import CHUNK_PERSONS, prepare, token_table, validation_mask  # noqa: F401
from omop_behrt.behrt.shards import MappedSequences
from omop_behrt.behrt.tokenizer import MASK, SPECIALS, TIME_TOKENS, Sequences, TokenVocabulary

IGNORE = -100


# -- data: omop_behrt.behrt.corpus (prepare, token_table, validation_mask, re-exported here) ----------------


def mask_tokens(input_ids: torch.Tensor, vocab_size: int, generator: torch.Generator, rate: float = 0.15
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BEHRT's masking: 15% of code tokens chosen; 80% -> [MASK], 10% -> random code, 10% kept.

    Special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) are never chosen. Returns (masked ids, labels) with
    labels = the original id on chosen tokens and -100 elsewhere.
    """
    u = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    action = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    rand = torch.randint(len(SPECIALS), vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    chosen = (input_ids >= len(SPECIALS)) & (u < rate)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, MASK), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), rand, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))


# -- training ---------------------------------------------------------------------------------------
def lr_at(step: int, lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``lr`` then linear decay to 0 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def optimizer_for(model: Behrt, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (never on norms and biases)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-8,
                             fused=True)


class Objective(torch.nn.Module):
    """The pretraining forward as one module, so DDP sees it all: masking, encoder, MLM on chosen tokens, PLOS;
    or (``next_visit``) the causal encoder and, at each visit's closing token, the next visit's codes."""

    def __init__(self, model: Behrt, plos_weight: float = 1.0):
        super().__init__()
        self.model, self.plos_weight = model, plos_weight

    def forward(self, batch: dict[str, torch.Tensor], gen: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        core = self.model
        if core.config.objective == "next_visit":
            return self.next_visit(batch)
        ids, labels = mask_tokens(batch["input_ids"], core.config.vocab_size, gen)
        extras = {k: batch[k] for k in core.config.extras}
        chosen = labels != IGNORE
        keep = chosen
        if core.plos_head is not None:                  # [CLS] too: each sequence's first token
            cls = torch.zeros_like(chosen)
            if "starts" in batch:
                cls.view(-1)[batch["starts"]] = True
            else:
                cls[:, 0] = True
            keep = chosen | cls
        # the last block only at the tokens read (masked tokens, [CLS]): hidden is hidden_full[keep], row-major
        hidden = core(ids, batch["ages"], batch["segments"], batch["positions"], batch["attention_mask"],
                      seq_index=batch.get("seq_index"), keep=keep, **extras)
        target = labels[chosen]
        logits = core.mlm_logits(hidden[chosen[keep]]).float()
        mlm = F.cross_entropy(logits, target) if target.numel() else logits.sum() * 0
        loss = mlm
        stats = {"mlm_loss": mlm.detach(), "loss": mlm.detach(), "n": torch.tensor(target.numel())}
        if target.numel():
            top10 = logits.topk(min(10, logits.shape[-1]), dim=-1).indices
            stats["correct"] = (top10[:, 0] == target).sum()
            stats["top10"] = (top10 == target[:, None]).any(-1).sum()
        if core.plos_head is not None:
            logit = core.plos_head(core.pool(hidden[cls[keep]][:, None])).squeeze(-1)   # sequence order
            plos = F.binary_cross_entropy_with_logits(logit.float(), batch["plos"])
            loss = loss + self.plos_weight * plos
            stats["plos_loss"] = plos.detach()
        return loss, stats

    def next_visit(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CLMBR's flattened variant: softmax over the codes, cross-entropy against the next visit's code set
        (uniform over it); stats: visits predicted (n), next-visit codes (targets) and those in the top 10."""
        core, c = self.model, self.model.config
        if "seq_index" in batch:
            raise ValueError("packed batches are for the MLM objective; next_visit trains on padded batches")
        extras = {k: batch[k] for k in c.extras}
        hidden = core(batch["input_ids"], batch["ages"], batch["segments"], batch["positions"],
                      batch["attention_mask"], **extras)
        first = len(SPECIALS) + (len(TIME_TOKENS) if c.time_tokens else 0)
        end, target = next_visit_targets(batch["input_ids"], batch["positions"], batch["attention_mask"],
                                         c.vocab_size, first)
        target = target[:, first:]
        keep = target.sum(1) > 0                                             # a next visit of [UNK]s only: none
        target = target[keep]
        logits = core.mlm_logits(hidden[end][keep]).float()[:, first:]
        loss = (F.cross_entropy(logits, target / target.sum(1, keepdim=True)) if len(target)
                else logits.sum() * 0)
        stats = {"loss": loss.detach(), "n": torch.tensor(len(target)), "targets": target.sum().long()}
        if len(target):
            top10 = logits.topk(min(10, logits.shape[-1]), dim=-1).indices
            stats["hits10"] = target.gather(1, top10).sum().long()
        return loss, stats


@torch.no_grad()
def evaluate(model: Behrt, seqs: Sequences | MappedSequences, batch_tokens: int, device: torch.device, seed: int,
             amp: bool) -> dict[str, float]:
    """Held-out loss and accuracy: masked-token accuracy and top-10 accuracy (fixed masking seed) under MLM;
    next-visit recall@10 (the share of the next visit's codes among the 10 likeliest) under ``next_visit``."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed + 7919)
    tot = {"loss": 0.0, "n": 0, "correct": 0, "top10": 0, "hits10": 0, "targets": 0}
    for _, b in device_batches(seqs, batch_tokens, device, model.config.extras, seed):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            _, s = Objective(model, 0.0)(b, gen)
        n = int(s["n"])
        tot["loss"] += float(s["loss"]) * n
        tot["n"] += n
        for k in ("correct", "top10", "hits10", "targets"):
            tot[k] += int(s.get(k, 0))
    model.train()
    n = max(1, tot["n"])
    if model.config.objective == "next_visit":
        return {"val_loss": tot["loss"] / n, "val_recall10": tot["hits10"] / max(1, tot["targets"]),
                "val_visits": tot["n"]}
    return {"val_loss": tot["loss"] / n, "val_acc": tot["correct"] / n, "val_top10": tot["top10"] / n,
            "val_masked": tot["n"]}


class Interrupt:
    """Ctrl-C (SIGINT) or SIGTERM while training: the first asks to stop after the step in flight, so the
    checkpoint written then is exact; a second one stops at once (KeyboardInterrupt, no checkpoint)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.asked, self._old = False, {}

    def _handler(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __enter__(self) -> "Interrupt":
        try:
            self._old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        except ValueError:                      # not the main thread: Ctrl-C raises where it lands, as usual
            self._old = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def stop(self, world: int, device: torch.device) -> bool:
        """Whether to stop now; with several processes, whether any of them was asked (all stop together)."""
        if world == 1:
            return self.asked
        flag = torch.tensor([int(self.asked)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def _epoch_plan(train: MappedSequences, batch_tokens: int, seed: int, epoch: int, cfg: BehrtConfig,
                packed: bool) -> list:
    """One epoch's batches, seeded by (seed, epoch): length-bucketed index arrays, or (``packed``) lists of rows."""
    if packed:
        return packed_plan(train.lengths, batch_tokens, row_width(train.lengths, cfg.max_len), seed, epoch,
                           shuffle=True)
    return batches(train.lengths, batch_tokens, seed, epoch)


def pretrain(events: str | Path | EventDir, vocab: str | None = None, out: str | Path = "model",
             config: str | BehrtConfig | None = None, *, epochs: int = 10, max_steps: int | None = None,
             stop_after: int | None = None, batch_tokens: int | None = None, lr: float = 5e-4,
             warmup: int | None = None, weight_decay: float = 0.01, clip: float = 1.0, plos: bool = False,
             plos_weight: float = 1.0, sex: bool = False, min_count: int = 10, val_fraction: float = 0.1,
             seed: int = 0, device: str = "auto", compile: bool = False, checkpoint_every: int = 500,
             log_every: int = 10, resume: bool = False, threads: int | None = None, progress: bool = True,
             age_unit: str | None = None, precision: str = "auto", work_dir: str | Path | None = None,
             init: str | Path | None = None, chunk_persons: int = CHUNK_PERSONS, packed: bool = False
             ) -> dict[str, Any]:
    """Pretrain a BEHRT encoder on an event directory; ``out`` becomes a model directory. Returns a summary.

    ``max_steps`` (else ``epochs`` x batches per epoch) sets the schedule length; ``stop_after`` ends this
    call early at that step with a checkpoint. ``resume=True`` continues the checkpoint in ``work_dir``
    (default ``<out>.work``) exactly, and refuses when there is none or when an input or setting that changes
    the result differs from the first run's. ``batch_tokens`` is the padded-token budget per batch (default
    16k; 4k for tiny). ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` (autocast on
    CPU too; fast on CPUs with AVX512-BF16/AMX) or ``fp32``. ``vocab`` defaults to ``source``, ``config`` to
    ``tiny``, ``age_unit`` to ``year``.

    ``init`` (a model directory, perhaps another site's): continued pretraining from its weights, with its
    configuration and vocabulary spec (a ``config``, ``vocab``, ``age_unit``, ``plos`` or ``sex`` that
    disagrees is an error), its token vocabulary extended by the local tokens seen in >= ``min_count`` local
    training persons that it lacks (new rows start at their nearest known ancestor's, else the mean).
    metadata.json records the init model's id and the extension counts, never its path.

    ``packed`` (MLM only): batches of packed rows (:mod:`omop_behrt.behrt.packing`), several persons side by side
    in each row under a block-diagonal attention mask, so almost no token is padding; a run setting (resume keeps it).

    Memory is flat in the number of persons: the events are tokenised ``chunk_persons`` at a time into shards
    in the work directory (:mod:`omop_behrt.behrt.corpus`; the chunk size never changes the result), and
    training reads the shards memory-mapped (:class:`omop_behrt.behrt.shards.MappedSequences`).
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32; got {precision!r}")
    ev = events if isinstance(events, EventDir) else EventDir.open(events)
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    if work.resolve() == out.resolve() or out.resolve() in work.resolve().parents:
        raise ValueError(f"--work-dir {work} is inside the model directory {out}: the work directory holds "
                         "per-person sequences and the model directory must not; give one outside it")
    writable_dir(out, "--out")
    writable_dir(work, "--work-dir")
    stale = [n for n in ("data", CHECKPOINT) if (out / n).exists()]
    if stale:
        warnings.warn(f"{out} holds {' and '.join(stale)} from an older version (tokenised sequences of every "
                      "training person): delete them before sharing the model directory", stacklevel=2)
    if min_count < 10:
        warnings.warn(f"min_count {min_count} < 10: tokens seen in so few persons are in tokens.json, so the model "
                      "directory is not shareable under the default rule", stacklevel=2)
    init_model = None
    if init is not None:
        init_model, cfg, vocab = init_model_for(init, config, vocab, plos=plos, sex=sex, age_unit=age_unit)
    else:
        vocab, age_unit = vocab or "source", age_unit or "year"
        cfg = config if isinstance(config, BehrtConfig) else BehrtConfig.preset(config or "tiny")
        cfg = BehrtConfig.from_dict({**asdict(cfg), "plos": plos, "age_unit": age_unit,
                                     "extras": {**cfg.extras, **({"sex": 3} if sex else {})},
                                     "n_ages": cfg.n_ages if age_unit == "year" else max(cfg.n_ages, 1452)})
    if packed and cfg.objective != "mlm":
        raise ValueError("packed batches are for the MLM objective; pretrain next_visit without packed")
    if cfg.objective == "next_visit" and cfg.plos:
        raise ValueError("plos (Med-BERT's length-of-stay head) reads [CLS], which under objective next_visit sees "
                         "the first visit only: pretrain next_visit without plos")
    world = int(os.environ.get("WORLD_SIZE", 1))
    budget = batch_tokens or (4096 if cfg.hidden <= 128 else 16384)
    fingerprint = {"events": events_fingerprint(ev.path), "vocab": vocab, "config": asdict(cfg),
                   "min_count": min_count, "val_fraction": val_fraction, "seed": seed, "batch_tokens": budget,
                   "lr": lr, "warmup": warmup, "weight_decay": weight_decay, "clip": clip,
                   "plos_weight": plos_weight, "epochs": epochs, "max_steps": max_steps, "precision": precision,
                   "world_size": world}
    if packed:                                 # only when on: earlier runs' fingerprints stay as they were
        fingerprint["packed"] = True
    if init_model is not None:                 # its id (sha256 of config, tokens, weights), never its path
        fingerprint["init_model"] = init_model.metadata["model_id"]
    run = check_resume(work, fingerprint, out) if resume else None
    rank = int(os.environ.get("RANK", 0))
    with work_dir_lock(work) if rank == 0 else contextlib.nullcontext():    # one run (of any number of ranks)
        return _train(ev, out, work, cfg, run, fingerprint, stop_after=stop_after, device=device,
                      compile=compile, checkpoint_every=checkpoint_every, log_every=log_every, threads=threads,
                      progress=progress, init=init_model, chunk_persons=chunk_persons)


def _train(ev: EventDir, out: Path, work: Path, cfg: BehrtConfig, run: dict | None, fingerprint: dict, *,
           stop_after: int | None, device: str, compile: bool, checkpoint_every: int, log_every: int,
           threads: int | None, progress: bool, init: Behrt | None = None, chunk_persons: int = CHUNK_PERSONS
           ) -> dict[str, Any]:
    """The run itself, under the work directory's lock: tokenise (or reload), train, checkpoint, save."""
    ckpt, data, metrics_file = work / CHECKPOINT, work / "data", work / "metrics.jsonl"
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    dev = resolve_device(device)
    if world > 1:
        import torch.distributed as dist
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if threads:
        torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    resuming = run is not None
    if resuming:
        cfg = BehrtConfig.from_dict(run["config"])
        tv = TokenVocabulary.load(data / "tokens.json")
        summary = json.loads((data / "summary.json").read_text())
    else:
        fp = fingerprint
        if rank == 0:
            ckpt.unlink(missing_ok=True)       # a fresh run: an older checkpoint must never be resumed into it
            metrics_file.unlink(missing_ok=True)
            tv, summary = prepare(ev, fp["vocab"], data, cfg, min_count=fp["min_count"],
                                  val_fraction=fp["val_fraction"], seed=fp["seed"], age_unit=cfg.age_unit,
                                  init_vocab=init.vocab if init is not None else None,
                                  chunk_persons=chunk_persons, progress=progress)
        if world > 1:
            torch.distributed.barrier()
            if rank != 0:                      # rank 0 tokenised; the others read what it wrote
                tv = TokenVocabulary.load(data / "tokens.json")
                summary = json.loads((data / "summary.json").read_text())
        cfg.vocab_size = len(tv)
    train, val = MappedSequences(data / "train"), MappedSequences(data / "val")    # memory-mapped shards
    if train.meta.get("vocab_sha256") != tv.sha256:
        raise ValueError(f"{data} was tokenised with another vocabulary than {data}/tokens.json; "
                         "start again without --resume")
    if not resuming:
        fp = fingerprint
        n_batches = len(_epoch_plan(train, fp["batch_tokens"], fp["seed"], 0, cfg, fp.get("packed", False)))
        n_batches //= world
        total = fp["max_steps"] or fp["epochs"] * max(1, n_batches)
        run = {"config": asdict(cfg), "seed": fp["seed"], "lr": fp["lr"], "weight_decay": fp["weight_decay"],
               "clip": fp["clip"], "batch_tokens": fp["batch_tokens"], "total_steps": total,
               "plos_weight": fp["plos_weight"], "warmup": fp["warmup"] if fp["warmup"] is not None
               else max(1, total // 10), "vocab": fp["vocab"], "checkpoint_every": checkpoint_every,
               "log_every": log_every, "world_size": world, "precision": fp["precision"], "fingerprint": fp}
        if fp.get("packed"):
            run["packed"] = True

    torch.manual_seed(run["seed"])
    core = Behrt(cfg)
    if init is not None and not resuming:
        init_weights(core, init, tv)
    core = core.to(dev)
    opt = optimizer_for(core, run["lr"], run["weight_decay"])
    gen = torch.Generator(device=dev).manual_seed(run["seed"] + rank)
    state = {"step": 0, "epoch": 0, "batch": 0}
    if resuming:
        state = load_checkpoint(ckpt, core, opt, gen, rank)
        if rank == 0 and metrics_file.exists():   # rows logged after the checkpoint are logged again
            rows = metrics_file.read_text().splitlines()
            metrics_file.write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= state["step"]))
    if compile and dev.type == "cuda":
        core.compile(dynamic=True)             # in place: the encoder's forward; state_dict names unchanged
    model: torch.nn.Module = Objective(core, run["plos_weight"])
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                        find_unused_parameters=not cfg.plos)   # the pooler serves PLOS only
    amp = run["precision"] == "bf16" or (run["precision"] == "auto" and dev.type == "cuda")
    total, step, saved = run["total_steps"], state["step"], state["step"]
    acc = {"loss": 0.0, "n": 0, "correct": 0, "top10": 0, "hits10": 0, "targets": 0, "plos": 0.0, "real": 0,
           "padded": 0, "steps": 0}
    t_log = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not progress or rank != 0)
    model.train()
    epoch, start = state["epoch"], state["batch"]
    with Interrupt() as interrupt:
        try:
            while step < total and (stop_after is None or step < stop_after):
                mine = _epoch_plan(train, run["batch_tokens"], run["seed"], epoch, cfg, run.get("packed", False))
                mine = mine[rank::world][: len(mine) // world]
                if run.get("packed", False):
                    stream = packed_device_batches(train, run["batch_tokens"], dev, cfg.extras, plan=mine[start:],
                                                   width=row_width(train.lengths, cfg.max_len))
                else:
                    stream = device_batches(train, run["batch_tokens"], dev, cfg.extras, plan=mine[start:])
                for j, (_, b) in enumerate(stream, start):
                    for g in opt.param_groups:
                        g["lr"] = lr_at(step, run["lr"], run["warmup"], total)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        loss, s = model(b, gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(core.parameters(), run["clip"])
                    opt.step()
                    step += 1
                    n = int(s["n"])
                    acc["loss"] += float(s["loss"]) * n
                    acc["n"] += n
                    for k in ("correct", "top10", "hits10", "targets"):
                        acc[k] += int(s.get(k, 0))
                    acc["plos"] += float(s.get("plos_loss", 0.0))
                    acc["real"] += int(b["attention_mask"].sum())
                    acc["padded"] += b["attention_mask"].numel()
                    acc["steps"] += 1
                    state = {"step": step, "epoch": epoch + (j + 1 == len(mine)), "batch": (j + 1) % len(mine),
                             "run": run}
                    done = step >= total or step == stop_after
                    if rank == 0 and (step % run["log_every"] == 0 or done):
                        dt = time.perf_counter() - t_log
                        row = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"],
                               "loss": acc["loss"] / max(1, acc["n"])}
                        if cfg.objective == "next_visit":
                            row["recall10"] = acc["hits10"] / max(1, acc["targets"])
                        else:
                            row |= {"masked_acc": acc["correct"] / max(1, acc["n"]),
                                    "top10_acc": acc["top10"] / max(1, acc["n"]),
                                    "precision": acc["correct"] / max(1, acc["n"])}    # BEHRT's micro precision
                        row |= {"tokens_per_s": acc["real"] * world / dt, "padding": 1 - acc["real"] / acc["padded"]}
                        if cfg.plos:
                            row["plos_loss"] = acc["plos"] / acc["steps"]
                        with metrics_file.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}")
                        acc = dict.fromkeys(acc, 0)
                        t_log = time.perf_counter()
                    bar.update(1)
                    stopping = interrupt.stop(world, dev)
                    if step % run["checkpoint_every"] == 0 or state["batch"] == 0 or done or stopping:
                        ranks = rank_rng_states(gen, world)           # the same decision on every rank
                        if rank == 0:                                  # atomic; every epoch end and on Ctrl-C
                            save_checkpoint(ckpt, core, opt, gen, state, ranks)
                        saved = step
                    if stopping:
                        raise KeyboardInterrupt
                    if done:
                        break
                epoch, start = state["epoch"], state["batch"]
        except KeyboardInterrupt:
            bar.close()
            if rank == 0:
                where = f"checkpoint at step {saved}" if saved else "no step finished, nothing to resume"
                print(f"pretrain: interrupted at step {step}/{total}; {where} in {work}", file=sys.stderr)
            raise
        finally:
            bar.close()
    result = {"out": str(out), "work_dir": str(work), "step": step, "total_steps": total, "finished": step >= total}
    if rank == 0 and step >= total:
        result.update(evaluate(core, val, run["batch_tokens"], dev, run["seed"], amp) if len(val) else {})
        with metrics_file.open("a") as f:
            f.write(json.dumps({"step": step, **{k: v for k, v in result.items() if k.startswith("val")}}) + "\n")
        meta = {"library_version": __version__, "vocab": run["vocab"], "vocab_sha256": tv.sha256,
                "vocab_size": len(tv), "cdm_version": summary.get("cdm_version"),
                "vocabulary_version": summary.get("vocabulary_version"), "training_data": summary,
                "training": {k: v for k, v in run.items() if k not in ("config", "fingerprint")}
                | {"steps": step, "events_fingerprint": run["fingerprint"]["events"]},
                "metrics": {k: v for k, v in result.items() if k.startswith("val")},
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if "init_model" in run["fingerprint"]:
            meta["init_model"] = {"model_id": run["fingerprint"]["init_model"],
                                  **{k: (init.metadata.get(k) if init is not None else None) for k in
                                     ("vocab", "vocab_sha256", "vocab_size", "library_version", "created_at")}}
            meta["vocab_extension"] = summary.get("vocab_extension")
        core.save(out, tv, meta)
        curve = [json.loads(r) for r in metrics_file.read_text().splitlines()]
        write_json(curve, out / "metrics.json")               # JSON (not JSONL): check-shareable reads it through
        result["model_id"] = core.metadata["model_id"]
    if world > 1:
        torch.distributed.barrier()
    return result

"""Pretraining under torchrun (2 processes, gloo, CPU) equals one process computing the same global batch.

Under DDP each rank takes every other batch (``batches(...)[rank::2]``), masks it with its own generator
(seed + rank), and the gradients are averaged. The one-process reference here runs the same steps from the
library's own pieces (``batches``, ``device_batches``, ``Objective``, ``optimizer_for``, ``lr_at``): per step
both ranks' batches, each with that rank's masking generator and dropout RNG stream, loss = their mean,
one clip and one AdamW step. Asserted: the per-step rank-0 losses agree to 1e-5 and the final weights to
atol 1e-5 (float sums in another order: the all-reduce). torchrun that cannot start (no free port, no
loopback) skips with the reason.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

STEPS, BATCH_TOKENS, SEED = 4, 2048, 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_torchrun(events: Path, out: Path, tmp: Path, extra: str = "") -> float:
    """Pretrain under ``torch.distributed.run`` (2 processes); returns its seconds, or skips if it cannot start.
    ``extra``: more keyword arguments of pretrain (e.g. ``stop_after=2`` or ``resume=True``)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch build has no torch.distributed gloo backend")
    script = tmp / "ddp_pretrain.py"
    script.write_text(textwrap.dedent(f"""
        from omop_behrt.behrt.pretrain import pretrain
        pretrain({str(events)!r}, "source", {str(out)!r}, "tiny", max_steps={STEPS}, batch_tokens={BATCH_TOKENS},
                 log_every=1, device="cpu", seed={SEED}, threads=1, progress=False, checkpoint_every=1{extra})
        """))
    try:
        port = _free_port()
    except OSError as e:
        pytest.skip(f"torchrun cannot start: no free TCP port on 127.0.0.1 ({e})")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), str(script)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        err = r.stderr[-3000:]
        if any(s in err for s in ("EADDRINUSE", "Address already in use", "Connection refused",
                                  "Unable to find address for", "no such device", "Failed to bind")):
            pytest.skip(f"torchrun could not start its 2 gloo processes on 127.0.0.1:{port}: {err[-400:]}")
        pytest.fail(f"torchrun pretrain failed (rc {r.returncode}):\n{err}")
    return time.perf_counter() - t0


def _one_process_reference(work: Path, config: dict, ranks: tuple[int, ...] = (0, 1)
                           ) -> tuple[torch.nn.Module, list[float]]:
    """The same 4 steps in one process: the ranks' batches per step, gradients averaged as DDP averages them."""
    from omop_behrt.behrt.batches import batches, device_batches
    from omop_behrt.behrt.model import Behrt, BehrtConfig
    from omop_behrt.behrt.pretrain import Objective, lr_at, optimizer_for
    from omop_behrt.behrt.tokenizer import Sequences
    train = Sequences.load(work / "data" / "train")                 # tokenised by the torchrun's rank 0
    cfg = BehrtConfig.from_dict(config)
    torch.manual_seed(SEED)
    core = Behrt(cfg)
    opt = optimizer_for(core, 5e-4, 0.01)
    gens = [torch.Generator().manual_seed(SEED + r) for r in (0, 1)]
    rng = [torch.get_rng_state(), torch.get_rng_state()]                # each rank's dropout stream
    plan = batches(train.lengths, BATCH_TOKENS, SEED, 0)
    per_rank = [plan[r::2][: len(plan) // 2] for r in (0, 1)]
    warmup = max(1, STEPS // 10)
    model, losses = Objective(core), []
    model.train()
    for step in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, 5e-4, warmup, STEPS)
        parts = []
        for r in ranks:
            (_, b), = device_batches(train, BATCH_TOKENS, "cpu", cfg.extras, plan=[per_rank[r][step]])
            torch.set_rng_state(rng[r])
            loss, _ = model(b, gens[r])
            rng[r] = torch.get_rng_state()
            parts.append(loss)
        losses.append(float(parts[0].detach()))
        opt.zero_grad(set_to_none=True)
        (sum(parts) / len(parts)).backward()
        torch.nn.utils.clip_grad_norm_(core.parameters(), 1.0)
        opt.step()
    return core, losses


def test_two_process_gloo_ddp_equals_one_process(eunomia_events, tmp_path):
    from safetensors.torch import load_file
    out = tmp_path / "model"
    seconds = _run_torchrun(eunomia_events.path, out, tmp_path)
    work = Path(str(out) + ".work")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["training"]["world_size"] == 2 and meta["training"]["steps"] == STEPS
    logged = [json.loads(r) for r in (work / "metrics.jsonl").read_text().splitlines()]
    ddp_losses = [r["loss"] for r in logged if "loss" in r][:STEPS]

    config = json.loads((out / "config.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        core, losses = _one_process_reference(work, config)
        half, _ = _one_process_reference(work, config, ranks=(0,))
    finally:
        torch.set_num_threads(threads)
    loss_gap = float(np.abs(np.subtract(ddp_losses, losses)).max())
    assert loss_gap < 1e-5, (ddp_losses, losses)
    ddp = load_file(str(out / "model.safetensors"))
    ref = core.state_dict()
    assert ddp.keys() == ref.keys()

    def gap(a: dict, b: dict) -> float:
        return max(float((a[k] - b[k]).abs().max()) for k in b)
    worst, moved, rank0_only = gap(ddp, ref), gap(ref, _initial(config)), gap(ddp, half.state_dict())
    # equal; the steps did move the weights; and rank 1's half of the batch counted (rank 0 alone differs)
    assert worst < 1e-5 < moved and rank0_only > 1e-4, (worst, moved, rank0_only)
    print(f"torchrun 2x gloo: {seconds:.1f} s; max |w_ddp - w_ref| {worst:.2e}, loss gap {loss_gap:.2e}; "
          f"max step change {moved:.2e}; rank 0's batches alone {rank0_only:.2e}")


def _initial(config: dict) -> dict[str, torch.Tensor]:
    """The weights both runs start from (seeded init)."""
    from omop_behrt.behrt.model import Behrt, BehrtConfig
    torch.manual_seed(SEED)
    return Behrt(BehrtConfig.from_dict(config)).state_dict()


def test_two_process_resume_is_exact(eunomia_events, tmp_path):
    """2 processes stopped after step 2 and resumed end with the weights of an uninterrupted 2-process run: each
    rank gets its own masking and dropout streams back from the checkpoint (rank 1 used to get rank 0's)."""
    from safetensors.torch import load_file
    full, part = tmp_path / "full", tmp_path / "part"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _run_torchrun(eunomia_events.path, full, tmp_path / "a")
    _run_torchrun(eunomia_events.path, part, tmp_path / "b", ", stop_after=2")
    assert not (part / "model.safetensors").exists()
    _run_torchrun(eunomia_events.path, part, tmp_path / "b", ", resume=True")
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), max(float((a[k] - b[k]).abs().max()) for k in a)


"""Pretraining: BEHRT's masking rates, length-bucketed batches, loss going down on Eunomia, exact resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omop_behrt.cli.main import main
from omop_behrt.behrt.model import Behrt
from omop_behrt.behrt.batches import batches, collate
from omop_behrt.behrt.pretrain import IGNORE, mask_tokens, pretrain
from omop_behrt.behrt.tokenizer import MASK, Sequences

torch.set_num_threads(1)


def test_masking_rates():
    V = 300
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (400, 500), generator=g)
    ids[:, ::10] = torch.randint(0, 5, (400, 50), generator=g)            # specials sprinkled in
    masked, labels = mask_tokens(ids, V, torch.Generator().manual_seed(1))
    special = ids < 5
    chosen = labels != IGNORE
    assert not chosen[special].any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen[~special].float().mean().item()
    assert abs(rate - 0.15) < 0.003
    n = chosen.sum().item()
    to_mask = (masked[chosen] == MASK).sum().item() / n
    same = (masked[chosen] == ids[chosen]).sum().item() / n
    assert abs(to_mask - 0.80) < 0.01
    assert abs(same - (0.10 + 0.10 / (V - 5))) < 0.01                     # kept, or random hit the same code
    random = masked[chosen][(masked[chosen] != MASK) & (masked[chosen] != ids[chosen])]
    assert abs(random.numel() / n - 0.10) < 0.01 and random.min() >= 5 and random.max() < V
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_batches_bucketed_and_complete():
    lengths = np.random.default_rng(0).integers(3, 257, 5000)
    bl = batches(lengths, 8192, seed=0, epoch=0)
    assert sorted(np.concatenate(bl).tolist()) == list(range(5000))
    padded = sum(len(b) * lengths[b].max() for b in bl)
    assert max(len(b) * lengths[b].max() for b in bl) <= 8192
    assert 1 - lengths.sum() / padded < 0.10
    again = batches(lengths, 8192, seed=0, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(bl, again))
    assert not all(np.array_equal(a, b) for a, b in zip(bl, batches(lengths, 8192, seed=0, epoch=1)))


@pytest.fixture(scope="module")
def trained(eunomia_events, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "model"
    res = pretrain(eunomia_events.path, vocab="source", out=out, config="tiny", max_steps=200, log_every=10,
                   checkpoint_every=100, progress=False, threads=1)
    return out, res


def test_pretrain_loss_falls(trained):
    out, res = trained
    rows = json.loads((out / "metrics.json").read_text())
    train = [r for r in rows if "loss" in r]
    assert train[0]["loss"] > 5.0                                # ~ log(vocab) at the start
    assert train[-1]["loss"] < train[0]["loss"] - 0.8            # and clearly lower after 200 steps
    assert train[-1]["top10_acc"] > train[0]["top10_acc"] + 0.1
    assert all(r["padding"] < 0.10 for r in train)
    assert res["finished"] and res["val_loss"] < train[0]["loss"] - 0.8


def test_model_directory(trained, eunomia_events):
    out, res = trained
    m = Behrt.load(out)
    meta = json.loads((out / "metadata.json").read_text())
    for key in ("library_version", "vocab", "vocab_sha256", "cdm_version", "training_data", "model_id"):
        assert key in meta
    data = out.parent / "model.work" / "data"                     # caches live beside, not in, the model directory
    assert res["work_dir"] == str(data.parent) and not (out / "data").exists()
    train = Sequences.load(data / "train")
    assert m.vocab.persons == meta["training_data"]["train_persons"] == len(train)   # vocab: train persons only
    assert len(train) + len(Sequences.load(data / "val")) == 2694
    b = collate(train, np.arange(4), {})
    with torch.no_grad():
        h = m(b["input_ids"], b["ages"], b["segments"], b["positions"], b["attention_mask"])
    assert h.shape[:2] == b["input_ids"].shape and torch.isfinite(h).all()


def test_resume_equals_uninterrupted(eunomia_events, tmp_path):
    kw = dict(vocab="source", config="tiny", max_steps=45, checkpoint_every=1000, progress=False, threads=1,
              batch_tokens=4096)
    pretrain(eunomia_events.path, out=tmp_path / "a", **kw)
    first = pretrain(eunomia_events.path, out=tmp_path / "b", stop_after=30, **kw)   # mid-epoch (37 batches)
    assert not first["finished"] and not (tmp_path / "b" / "model.safetensors").exists()
    pretrain(eunomia_events.path, out=tmp_path / "b", resume=True, **kw)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_plos_sex_and_cli(eunomia_events, tmp_path):
    rc = main(["pretrain", "--events", str(eunomia_events.path), "--vocab", "source", "--out", str(tmp_path / "m"),
               "--config", "tiny", "--max-steps", "4", "--plos", "--sex", "--quiet", "--threads", "1",
               "--precision", "bf16"])
    assert rc == 0
    m = Behrt.load(tmp_path / "m")
    assert m.config.plos and m.config.extras == {"sex": 3} and m.plos_head is not None
    rows = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert "plos_loss" in rows[0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: bf16 autocast + torch.compile not exercised")
def test_cuda_bf16_compile(eunomia_events, tmp_path):
    res = pretrain(eunomia_events.path, out=tmp_path / "m", config="tiny", max_steps=30, device="cuda",
                   compile=True, progress=False)
    assert res["finished"] and np.isfinite(res["val_loss"])
    assert Behrt.load(tmp_path / "m").embeddings.code.weight.dtype == torch.float32


def test_events_fingerprint_is_the_extraction_not_its_timing(synthea_dir, tmp_path):
    """The same extraction run twice has one fingerprint (a re-extraction does not refuse `pretrain --resume`);
    other rows give another."""
    from omop_behrt.adapters import omop
    from omop_behrt.behrt.checkpoint import events_fingerprint
    for name in ("a", "b"):
        omop.extract(synthea_dir, tmp_path / name, progress=False)
    omop.extract(synthea_dir, tmp_path / "c", progress=False, options=omop.ExtractOptions(person_ids=[1, 2, 3]))
    a, b, c = (events_fingerprint(tmp_path / n) for n in "abc")
    assert a == b and a != c


def test_cli_time_tokens_and_max_len(eunomia_events, tmp_path, capsys):
    """`pretrain --time-tokens --max-len 96`: the model's config and vocabulary carry them, and embedding reads
    them back; with --init the shape is the init model's, so both are refused."""
    out = tmp_path / "m"
    assert main(["pretrain", "--events", str(eunomia_events.path), "--out", str(out), "--max-steps", "2",
                 "--time-tokens", "--max-len", "96", "--device", "cpu", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["time_tokens"] is True and cfg["max_len"] == 96 and cfg["hidden"] == 64     # tiny otherwise
    model = Behrt.load(out)
    assert model.vocab.has_time_tokens and "[LT]" in model.vocab.tokens
    capsys.readouterr()
    assert main(["pretrain", "--events", str(eunomia_events.path), "--out", str(tmp_path / "m2"), "--init", str(out),
                 "--time-tokens", "--max-steps", "1", "--quiet"]) == 2
    assert "with --init the shape is the init model's" in capsys.readouterr().err

"""Packed batches (several persons per row, block-diagonal attention) give each person what it gets alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omop_behrt.behrt.batches import collate
from omop_behrt.behrt.checkpoint import default_work_dir
from omop_behrt.behrt.model import Behrt, BehrtConfig, pool
from omop_behrt.behrt.packing import collate_packed, pack_rows, packed_plan, row_width
from omop_behrt.behrt.shards import MappedSequences
from omop_behrt.behrt.tokenizer import MASK, SPECIALS, Sequences


@pytest.fixture(scope="module")
def real_seqs(tiny_model) -> Sequences:
    """60 of the tiny model's Eunomia training sequences (real lengths, visits, ages), in memory."""
    train = MappedSequences(default_work_dir(tiny_model) / "data" / "train")
    return train.select(np.arange(min(60, len(train))))


def alone(model: Behrt, seqs: Sequences, pooling: str) -> np.ndarray:
    """Each sequence embedded on its own (a batch of one, no padding): the reference."""
    out = []
    with torch.no_grad():
        for i in range(len(seqs)):
            b = collate(seqs, np.array([i]), model.config.extras)
            b.pop("plos")
            out.append(pool(model, model(**b), b, pooling)[0].numpy())
    return np.stack(out)


def test_pack_rows_places_every_sequence_once_within_the_width():
    lengths = np.random.default_rng(1).integers(1, 100, 500)
    rows = pack_rows(lengths, 128)
    flat = np.concatenate(rows)
    assert sorted(flat.tolist()) == list(range(500))
    assert max(int(lengths[r].sum()) for r in rows) <= 128
    lower = -(-int(lengths.sum()) // 128)               # no packing can use fewer rows than this
    assert len(rows) <= lower * 1.03 + 1, (len(rows), lower)
    with pytest.raises(ValueError, match="sequence 3 has 200 tokens, more than the row width 128"):
        pack_rows(np.array([5, 6, 7, 200]), 128)
    assert row_width(np.array([3, 17, 40])) == 48 and row_width(np.array([250]), 256) == 256


def test_packed_plan_is_seeded_and_holds_every_sequence():
    lengths = np.random.default_rng(2).integers(5, 60, 300)
    a = packed_plan(lengths, 512, 64, seed=3, epoch=1, shuffle=True)
    b = packed_plan(lengths, 512, 64, seed=3, epoch=1, shuffle=True)
    c = packed_plan(lengths, 512, 64, seed=3, epoch=2, shuffle=True)
    flat = lambda plan: [i for batch in plan for row in batch for i in row.tolist()]   # noqa: E731
    assert flat(a) == flat(b) and flat(a) != flat(c)
    assert sorted(flat(a)) == list(range(300))
    assert all(len(batch) <= 512 // 64 for batch in a)


def test_collate_packed_lays_each_sequence_out_contiguously(real_seqs):
    width = row_width(real_seqs.lengths)
    rows = pack_rows(real_seqs.lengths, width)[:5]
    idx, b = collate_packed(real_seqs, rows, width, {"sex": 3})
    assert b["input_ids"].shape == (5, width)
    flat = {k: b[k].reshape(-1).numpy() for k in ("input_ids", "ages", "segments", "positions", "seq_index", "sex")}
    for j, i in enumerate(idx):
        s, n = int(b["starts"][j]), int(real_seqs.lengths[i])
        one = real_seqs[int(i)]
        for k in ("input_ids", "ages", "segments", "positions"):
            np.testing.assert_array_equal(flat[k][s:s + n], one[k])
        assert (flat["seq_index"][s:s + n] == j).all() and (flat["sex"][s:s + n] == real_seqs.sex[i]).all()
    assert int(b["attention_mask"].sum()) == int(real_seqs.lengths[idx].sum()) == int((flat["seq_index"] >= 0).sum())
    assert b["plos"].shape == (len(idx),)


@pytest.mark.parametrize("pooling", ["cls", "mean", "last_visit"])
def test_packed_embeddings_equal_one_at_a_time(tiny_model, real_seqs, pooling):
    from omop_behrt.vectors.embed import embed_sequences
    m = Behrt.load(tiny_model)
    ref = alone(m, real_seqs, pooling)
    packed = embed_sequences(m, real_seqs, pooling=pooling, packed=True, batch_tokens=256)
    bucketed = embed_sequences(m, real_seqs, pooling=pooling)
    assert np.abs(packed - ref).max() < 1e-5
    assert np.abs(bucketed - ref).max() < 1e-5
    assert np.abs(ref).max() > 0.01                       # not trivially zero


@pytest.mark.parametrize("objective", ["mlm", "next_visit"])
def test_packed_mask_keeps_persons_apart_with_extras(real_seqs, objective):
    """A model with a per-person extra (sex, per token when packed) and, under next_visit, the causal-by-visit
    mask inside each block: packed vectors are each person's own."""
    from omop_behrt.vectors.embed import embed_sequences
    torch.manual_seed(0)
    vocab = int(real_seqs.input_ids.max()) + 1
    m = Behrt(BehrtConfig.preset("tiny", vocab_size=vocab, extras={"sex": 3}, objective=objective)).eval()
    pooling = "last_visit" if objective == "next_visit" else "mean"
    ref = alone(m, real_seqs, pooling)
    packed = embed_sequences(m, real_seqs, pooling=pooling, packed=True, batch_tokens=512)
    assert np.abs(packed - ref).max() < 1e-5


def test_packed_training_loss_and_gradients_match(real_seqs):
    """The same masked tokens, padded or packed: the MLM + PLOS loss and every gradient agree."""
    torch.manual_seed(0)
    vocab = int(real_seqs.input_ids.max()) + 1
    m = Behrt(BehrtConfig.preset("tiny", vocab_size=vocab, dropout=0.0, plos=True)).train()
    rng = np.random.default_rng(0)
    chosen = (real_seqs.input_ids >= len(SPECIALS)) & (rng.random(len(real_seqs.input_ids)) < 0.15)
    masked = Sequences(real_seqs.offsets, np.where(chosen, MASK, real_seqs.input_ids).astype(np.int32),
                       *(getattr(real_seqs, a) for a in Sequences.ARRAYS[2:]))
    labels = Sequences(real_seqs.offsets, np.where(chosen, real_seqs.input_ids, 0).astype(np.int32),
                       *(getattr(real_seqs, a) for a in Sequences.ARRAYS[2:]))
    plos = torch.from_numpy((np.arange(len(real_seqs)) % 3 == 0).astype(np.float32))

    def loss_and_grads(b: dict, lab: torch.Tensor, order: np.ndarray) -> tuple[float, dict]:
        m.zero_grad()
        h = m(b["input_ids"], b["ages"], b["segments"], b["positions"], b["attention_mask"],
              seq_index=b.get("seq_index"))
        pick = lab > 0
        mlm = F.cross_entropy(m.mlm_logits(h[pick]), lab[pick])
        loss = mlm + F.binary_cross_entropy_with_logits(m.plos_head(pool(m, h, b, "cls")).squeeze(-1), plos[order])
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    everyone = np.arange(len(real_seqs))
    padded = collate(masked, everyone, {})
    lp, gp = loss_and_grads(padded, collate(labels, everyone, {})["input_ids"], everyone)
    width = row_width(real_seqs.lengths)
    rows = pack_rows(real_seqs.lengths, width)
    idx, packed = collate_packed(masked, rows, width, {})
    lk, gk = loss_and_grads(packed, collate_packed(labels, rows, width, {})[1]["input_ids"], idx)
    assert int(chosen.sum()) > 100 and len(idx) == len(real_seqs)
    assert abs(lp - lk) < 1e-5 * max(1.0, abs(lp))
    assert set(gp) == set(gk)
    worst = max(float((gp[n] - gk[n]).abs().max()) for n in gp)
    assert worst < 1e-5, worst


def test_pretrain_packed_trains_with_little_padding(eunomia_events, tmp_path):
    from omop_behrt.behrt.pretrain import pretrain
    out = tmp_path / "m"
    res = pretrain(eunomia_events, "source", out, "tiny", max_steps=20, progress=False, device="cpu", seed=0,
                   packed=True, log_every=5, threads=1)
    assert res["finished"] and res["val_masked"] > 0
    rows = [r for r in json.loads((out / "metrics.json").read_text()) if "padding" in r]
    assert len(rows) == 4 and all(r["padding"] < 0.05 for r in rows), [r["padding"] for r in rows]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert json.loads((out / "metadata.json").read_text())["training"]["packed"] is True
    with pytest.raises(ValueError, match="packed batches are for the MLM objective"):
        pretrain(eunomia_events, "source", tmp_path / "nv", BehrtConfig.preset("tiny", objective="next_visit"),
                 max_steps=1, progress=False, device="cpu", packed=True)


@pytest.mark.parametrize("objective", ["mlm", "next_visit"])
def test_keep_returns_the_full_states_of_the_kept_tokens(real_seqs, objective):
    """forward(keep=...) computes the last block at the kept tokens only and returns hidden[keep]."""
    torch.manual_seed(0)
    vocab = int(real_seqs.input_ids.max()) + 1
    m = Behrt(BehrtConfig.preset("tiny", vocab_size=vocab, objective=objective)).eval()
    width = row_width(real_seqs.lengths)
    _, packed = collate_packed(real_seqs, pack_rows(real_seqs.lengths, width), width, {})
    padded = collate(real_seqs, np.arange(len(real_seqs)), {})
    gen = torch.Generator().manual_seed(1)
    for b in (padded, packed):
        args = {k: b[k] for k in ("input_ids", "ages", "segments", "positions", "attention_mask")}
        args["seq_index"] = b.get("seq_index")
        keep = (torch.rand(b["input_ids"].shape, generator=gen) < 0.15) & b["attention_mask"]
        keep[3] = False                                   # a row with nothing kept
        with torch.no_grad():
            full, part = m(**args), m(**args, keep=keep)
        assert part.shape == (int(keep.sum()), m.config.hidden)
        assert float((full[keep] - part).abs().max()) < 1e-5


def test_objective_with_plos_matches_the_full_forward(real_seqs):
    """Objective reads the last block at masked tokens and [CLS] only: same loss as from every token's state."""
    from omop_behrt.behrt.pretrain import IGNORE, Objective, mask_tokens
    torch.manual_seed(0)
    vocab = int(real_seqs.input_ids.max()) + 1
    m = Behrt(BehrtConfig.preset("tiny", vocab_size=vocab, dropout=0.0, plos=True)).train()
    width = row_width(real_seqs.lengths)
    rows = pack_rows(real_seqs.lengths, width)
    for b in (collate(real_seqs, np.arange(len(real_seqs)), {}), collate_packed(real_seqs, rows, width, {})[1]):
        b["plos"] = (torch.arange(len(b["plos"])) % 2).float()
        loss, stats = Objective(m)(b, torch.Generator().manual_seed(5))
        ids, labels = mask_tokens(b["input_ids"], vocab, torch.Generator().manual_seed(5))
        h = m(ids, b["ages"], b["segments"], b["positions"], b["attention_mask"], seq_index=b.get("seq_index"))
        chosen = labels != IGNORE
        ref = F.cross_entropy(m.mlm_logits(h[chosen]), labels[chosen])
        ref = ref + F.binary_cross_entropy_with_logits(m.plos_head(pool(m, h, b, "cls")).squeeze(-1), b["plos"])
        assert int(stats["n"]) == int(chosen.sum()) > 50
        assert abs(float(loss.detach()) - float(ref.detach())) < 1e-5


def test_pretrain_packed_from_the_cli(eunomia_events, tmp_path, capsys):
    """``pretrain --packed`` reaches the packed batches (recorded in the model's metadata); with next_visit it is
    one line, exit 2."""
    from omop_behrt.cli.main import main
    out = tmp_path / "m"
    assert main(["pretrain", "--events", str(eunomia_events.path), "--out", str(out), "--max-steps", "4",
                 "--packed", "--quiet", "--threads", "1", "--device", "cpu"]) == 0
    assert json.loads((out / "metadata.json").read_text())["training"]["packed"] is True
    rc = main(["pretrain", "--events", str(eunomia_events.path), "--out", str(tmp_path / "nv"), "--max-steps", "1",
               "--packed", "--objective", "next_visit", "--quiet", "--device", "cpu"])
    assert rc == 2 and "packed batches are for the MLM objective" in capsys.readouterr().err

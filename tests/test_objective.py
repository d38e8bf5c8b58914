"""The next-visit objective (CLMBR-style): causal-by-visit attention, next-visit targets, pretraining on Eunomia
through the CLI, and old config.json files (no ``objective`` key) loading and embedding exactly as MLM models."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from omop_behrt.behrt.batches import collate, next_visit_targets
from omop_behrt.cli.main import build_parser, main
from omop_behrt.behrt.model import pool as model_pool
from omop_behrt.behrt.model import OBJECTIVES, Behrt, BehrtConfig, _id_from, _metadata_digest, file_digests

torch.set_num_threads(1)


def visits_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two padded sequences of [CLS] codes [SEP] visits: positions are visit indices, padding at the end."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3],
                        [0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 0, 0]])
    mask = torch.tensor([[True] * 12, [True] * 9 + [False] * 3])
    ids = torch.randint(5, 40, pos.shape, generator=g)
    ends = torch.cat([pos[:, 1:] != pos[:, :-1], torch.ones(2, 1, dtype=torch.bool)], 1) | ~mask
    ids = torch.where(ends, 3, ids) * mask                      # each visit closed by [SEP]; [PAD] = 0
    ids[:, 0] = 2
    return {"input_ids": ids, "ages": (40 + pos) * mask, "segments": (pos % 2) * mask, "positions": pos,
            "attention_mask": mask}


def tiny(objective: str) -> Behrt:
    torch.manual_seed(0)
    return Behrt(BehrtConfig.preset("tiny", vocab_size=40, objective=objective)).eval()


def test_config_objective_default_and_checked():
    assert BehrtConfig().objective == "mlm" and OBJECTIVES == ("mlm", "next_visit")
    with pytest.raises(ValueError, match="objective must be one of"):
        BehrtConfig(objective="next_code")
    m = tiny("mlm")
    assert m.attention_mask(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool)).shape \
        == (2, 1, 1, 5)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_causal_by_visit(objective):
    """Under next_visit, changing visit >= 2 leaves every token of visits 0-1 as it was (and padding yields no
    NaN); under MLM the same change reaches them."""
    b = visits_batch()
    later = b["positions"] >= 2
    changed = dict(b, input_ids=torch.where(later & b["attention_mask"] & (b["input_ids"] > 3),
                                            (b["input_ids"] - 5 + 7) % 35 + 5, b["input_ids"]),
                   ages=torch.where(later, b["ages"] + 3, b["ages"]) * b["attention_mask"])
    m = tiny(objective)
    with torch.no_grad():
        h, h2 = m(**b), m(**changed)
    assert torch.isfinite(h).all()
    early = ~later & b["attention_mask"]
    diff = (h - h2).abs().amax(-1)
    assert diff[later & b["attention_mask"]].min() > 1e-3                   # the change is real
    if objective == "next_visit":
        assert diff[early].max() == 0.0
        mask = m.attention_mask(b["positions"], b["attention_mask"])
        assert mask.shape == (2, 1, 12, 12) and mask[:, 0].any(-1).all()    # every query sees something
        assert not mask[1, 0, :, 9:].any()                                  # nobody sees padding
    else:
        assert diff[early].min() > 1e-3


def test_next_visit_targets_match_a_plain_loop():
    """Targets at each visit's last token = the set of codes (>= first) of the next visit, by a plain loop."""
    ids = torch.tensor([[2, 9, 7, 9, 3, 5, 3, 8, 12, 3, 0],              # [CLS] 9 7 9 [SEP] | 5 [SEP] | 8 12 [SEP]
                        [2, 1, 3, 6, 11, 3, 10, 3, 0, 0, 0],             # 2nd visit: time token 6 + code 11
                        [2, 4, 3, 0, 0, 0, 0, 0, 0, 0, 0]])               # one visit: no target
    pos = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 0],
                        [0, 0, 0, 1, 1, 1, 2, 2, 0, 0, 0],
                        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    mask = ids != 0
    first = 7                                                            # 5, 6: "time tokens", not codes
    end, target = next_visit_targets(ids, pos, mask, 13, first)
    expected_end, expected = [], []
    for b in range(3):
        n = int(mask[b].sum())
        visits = sorted(set(pos[b, :n].tolist()))
        for v, w in zip(visits, visits[1:]):
            last = max(t for t in range(n) if pos[b, t] == v)
            expected_end.append((b, last))
            row = torch.zeros(13)
            for t in range(n):
                if pos[b, t] == w and ids[b, t] >= first:
                    row[ids[b, t]] = 1
            expected.append(row)
    assert [tuple(x) for x in end.nonzero().tolist()] == expected_end == [(0, 4), (0, 6), (1, 2), (1, 5)]
    assert torch.equal(target, torch.stack(expected))
    assert target[0].sum() == 0 and target[1].nonzero().flatten().tolist() == [8, 12]      # 5 is no code
    assert target[2].nonzero().flatten().tolist() == [11] and target[3].nonzero().flatten().tolist() == [10]


def test_next_visit_pretrain_cli_embed_and_resume_check(eunomia_events, tmp_path):
    """`pretrain --objective next_visit`: loss falls over 30 steps, recall@10 reported, the config records it,
    embedding uses the causal mask; the checkpoint refuses an MLM resume; --init, --plos are refused."""
    from omop_behrt.behrt.checkpoint import ResumeError
    from omop_behrt.vectors.embed import embed_sequences
    from omop_behrt.behrt.pretrain import pretrain
    from omop_behrt.behrt.tokenizer import Sequences
    out = tmp_path / "m"
    assert main(["pretrain", "--events", str(eunomia_events.path), "--out", str(out), "--objective", "next_visit",
                 "--max-steps", "30", "--device", "cpu", "--quiet", "--threads", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["objective"] == "next_visit"
    rows = json.loads((out / "metrics.json").read_text())
    train = [r for r in rows if "loss" in r]
    assert "masked_acc" not in train[0] and train[-1]["loss"] < train[0]["loss"] - 0.3
    assert train[-1]["recall10"] > train[0]["recall10"]
    meta = json.loads((out / "metadata.json").read_text())
    assert set(meta["metrics"]) == {"val_loss", "val_recall10", "val_visits"} and meta["metrics"]["val_visits"] > 100
    assert 0.2 < meta["metrics"]["val_recall10"] <= 1.0

    m = Behrt.load(out)
    val = Sequences.load(out.parent / "m.work" / "data" / "val").select(np.arange(6))
    vec = embed_sequences(m, val, pooling="last_visit")
    b = collate(val, np.arange(6), {})
    b.pop("plos")
    with torch.no_grad():
        h = m(**b)
    last = b["positions"].masked_fill(~b["attention_mask"], -1)
    pick = b["attention_mask"] & (last == last.max(1, keepdim=True).values)
    manual = (h * pick[..., None]).sum(1) / pick.sum(1, keepdim=True)
    assert np.allclose(vec, manual.numpy(), atol=1e-5)                  # the model's own (causal) mask
    with pytest.warns(UserWarning, match="use pooling 'last_visit'"):
        embed_sequences(m, val, pooling="cls")

    with pytest.raises(ResumeError, match="config.objective"):
        pretrain(eunomia_events.path, out=out, config="tiny", max_steps=30, resume=True, progress=False)
    with pytest.raises(ValueError, match="plos"):
        pretrain(eunomia_events.path, out=tmp_path / "p", config=BehrtConfig.preset("tiny", objective="next_visit"),
                 plos=True, max_steps=1, progress=False)
    assert main(["pretrain", "--events", str(eunomia_events.path), "--out", str(tmp_path / "i"), "--init", str(out),
                 "--objective", "mlm", "--max-steps", "1", "--quiet"]) == 2
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["pretrain"]
    assert tuple(next(a for a in sub._actions if "--objective" in a.option_strings).choices) == OBJECTIVES


def test_old_config_without_objective_embeds_identically(tiny_model, eunomia_events, tmp_path):
    """A model directory whose config.json has no ``objective`` key (as an older version wrote it, model id and
    digests consistent) loads as MLM, and embeds bit-identically to the same weights under objective "mlm"."""
    from omop_behrt.behrt.checkpoint import default_work_dir
    from omop_behrt.vectors.embed import embed_sequences
    from omop_behrt.behrt.tokenizer import Sequences
    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg.pop("objective", None)
    (old / "config.json").write_text(json.dumps(cfg, indent=2))
    meta = json.loads((old / "metadata.json").read_text())
    files = file_digests(old)
    meta |= {"model_id": _id_from(files), "model_files": files | {"metadata.json": _metadata_digest(meta)}}
    (old / "metadata.json").write_text(json.dumps(meta, indent=2))

    m_old, m_new = Behrt.load(old), Behrt.load(tiny_model)
    assert m_old.config.objective == "mlm" and m_old.metadata["model_id"] != m_new.metadata["model_id"]
    seqs = Sequences.load(default_work_dir(tiny_model) / "data" / "val")
    seqs = seqs.select(np.arange(min(40, len(seqs))))
    for pooling in ("cls", "mean", "last_visit"):
        a = embed_sequences(m_old, seqs, pooling=pooling)
        b = embed_sequences(m_new, seqs, pooling=pooling)
        assert a.tobytes() == b.tobytes()
    b = collate(seqs, np.arange(3), {})
    assert m_old.attention_mask(b["positions"], b["attention_mask"]).shape == (3, 1, 1, b["input_ids"].shape[1])


def test_ffn_head_of_a_next_visit_encoder_reads_the_last_visit():
    """The FFN head pools the last visit of a next-visit encoder (its [CLS] sees the first visit only): changing
    the last visit changes the head's output; the MLM encoder's head still reads the pooled [CLS]."""
    from omop_behrt.evaluation.heads import HeadModel
    b = visits_batch()
    last = b["positions"] == b["positions"].masked_fill(~b["attention_mask"], -1).amax(1, keepdim=True)
    changed = dict(b, input_ids=torch.where(last & (b["input_ids"] > 3), (b["input_ids"] - 5 + 7) % 35 + 5,
                                            b["input_ids"]))
    for objective in OBJECTIVES:
        torch.manual_seed(0)
        head = HeadModel(tiny(objective), "ffn", 1).eval()
        with torch.no_grad():
            out, out2 = head(b), head(changed)
        if objective == "next_visit":        # its [CLS] cannot see the last visit: only the pooling can
            assert (out - out2).abs().max() > 1e-4
        with torch.no_grad():
            hidden = head.encoder(**b)
        expected = (model_pool(head.encoder, hidden, b, "last_visit") if objective == "next_visit"
                    else head.encoder.pool(hidden))
        with torch.no_grad():
            assert torch.allclose(head.out(expected), out)

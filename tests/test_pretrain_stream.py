"""Streaming pretraining: tokenised in chunks of persons to shards, trained from memory maps, equals in memory.

The reference here is the in-memory path, computed from the library's pieces independently of the streaming
code: the whole token table mapped in memory, the vocabulary built from its training rows, every person
tokenised in one query, split train/val. The streaming corpus (tiny chunks, so many chunks and shards) must
hold the same arrays, and pretraining from it (memory-mapped, stopped and resumed) must give the same weights,
byte for byte, as pretraining from the reference held in memory.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from omop_behrt.behrt import pretrain as pretrain_module
from omop_behrt.behrt.batches import collate
from omop_behrt.behrt.continued import continue_vocabulary
from omop_behrt.behrt.corpus import prepare, token_table, validation_mask
from omop_behrt.behrt.model import BehrtConfig
from omop_behrt.behrt.pretrain import pretrain
from omop_behrt.behrt.shards import MappedSequences, mapped_npz
from omop_behrt.behrt.tokenizer import Sequences, TokenVocabulary, tokenize, visit_table
from omop_behrt.events import EventDir

torch.set_num_threads(1)


def reference(ev: EventDir, config: BehrtConfig, *, min_count: int = 10, val_fraction: float = 0.1, seed: int = 0,
              age_unit: str = "year", init_vocab: TokenVocabulary | None = None
              ) -> tuple[TokenVocabulary, Sequences, Sequences, dict | None]:
    """The in-memory path: vocabulary, train and val sequences (and the continued-pretraining extension)."""
    tokens, _ = token_table(ev, "source")
    is_val = validation_mask(tokens.column("subject_id").to_numpy(), val_fraction, seed)
    tv = TokenVocabulary.build(tokens.filter(pa.array(~is_val)), min_count=min_count, time_tokens=config.time_tokens)
    extension = None
    if init_vocab is not None:
        tv, extension, tokens = continue_vocabulary(init_vocab, tv, tokens)
    seqs = tokenize(tokens, ev.persons(), tv, max_len=config.max_len, age_unit=age_unit, visits=visit_table(ev),
                    time_tokens=config.time_tokens)
    val = validation_mask(seqs.subject_id, val_fraction, seed)
    return tv, seqs.select(np.flatnonzero(~val)), seqs.select(np.flatnonzero(val)), extension


def assert_same(a: Sequences | MappedSequences, b: Sequences) -> None:
    got = a.select(np.arange(len(a))) if isinstance(a, MappedSequences) else a
    assert len(got) == len(b) > 0
    for name in Sequences.ARRAYS:
        np.testing.assert_array_equal(getattr(got, name), getattr(b, name), err_msg=name)


def test_chunked_corpus_equals_the_in_memory_one(eunomia_events, tmp_path):
    cfg = BehrtConfig.preset("tiny")
    tv, summary = prepare(eunomia_events, "source", tmp_path, cfg, chunk_persons=97)
    ref_tv, ref_train, ref_val, _ = reference(eunomia_events, cfg)
    assert tv.tokens == ref_tv.tokens and tv.counts == ref_tv.counts and tv.persons == ref_tv.persons
    train, val = MappedSequences(tmp_path / "train"), MappedSequences(tmp_path / "val")
    assert len(train.parts) == -(-(len(ref_train) + len(ref_val)) // 97) > 20     # one shard per chunk
    assert not train.parts[0].input_ids.flags.owndata and not train.parts[0].input_ids.flags.writeable   # mapped
    assert_same(train, ref_train)
    assert_same(val, ref_val)
    assert_same(Sequences.load(tmp_path / "train"), ref_train)                    # the layout Sequences.save has
    np.testing.assert_array_equal(train.lengths, ref_train.lengths)
    assert summary["train_persons"] == len(ref_train) and summary["val_persons"] == len(ref_val)
    assert summary["train_tokens"] == int(ref_train.offsets[-1])
    assert not (tmp_path / "staging").exists()
    idx = np.random.default_rng(0).permutation(len(ref_train))[:40]               # rows from many shards
    a, b = collate(train, idx, {"sex": 3}), collate(ref_train, idx, {"sex": 3})
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_chunked_corpus_on_synthea_with_time_tokens_and_months(synthea_dir, tmp_path):
    from omop_behrt.adapters import omop
    omop.extract(synthea_dir, tmp_path / "ev", progress=False)
    ev = EventDir.open(tmp_path / "ev")
    cfg = BehrtConfig.from_dict({**BehrtConfig.preset("tiny").__dict__, "time_tokens": True, "max_len": 48})
    tv, _ = prepare(ev, "source", tmp_path / "data", cfg, chunk_persons=7, age_unit="month", min_count=3,
                    val_fraction=0.2)
    ref_tv, ref_train, ref_val, _ = reference(ev, cfg, age_unit="month", min_count=3, val_fraction=0.2)
    assert tv.tokens == ref_tv.tokens and tv.has_time_tokens
    assert_same(MappedSequences(tmp_path / "data" / "train"), ref_train)
    assert_same(MappedSequences(tmp_path / "data" / "val"), ref_val)
    assert ref_train.plos.any() and (ref_train.input_ids == tv.tokens.index("[LT]")).any()


def test_chunked_continued_pretraining_vocabulary(eunomia_events, tmp_path):
    """--init: the extended vocabulary, its counts and coverage, and the fallback-applied sequences, per chunk."""
    cfg = BehrtConfig.preset("tiny")
    tokens, _ = token_table(eunomia_events, "source")
    even = tokens.filter(pa.array(tokens.column("subject_id").to_numpy() % 2 == 0))
    init = TokenVocabulary.build(even, min_count=50)
    tv, summary = prepare(eunomia_events, "source", tmp_path, cfg, chunk_persons=300, init_vocab=init)
    ref_tv, ref_train, ref_val, extension = reference(eunomia_events, cfg, init_vocab=init)
    assert tv.tokens == ref_tv.tokens and tv.tokens[:len(init)] == init.tokens
    assert summary["vocab_extension"] == json.loads(json.dumps(extension)) and extension["added_tokens"] > 0
    assert_same(MappedSequences(tmp_path / "train"), ref_train)
    assert_same(MappedSequences(tmp_path / "val"), ref_val)


def test_streamed_resumed_pretraining_equals_in_memory(eunomia_events, tmp_path, monkeypatch):
    """Stopped mid-epoch and resumed from 27 memory-mapped shards == one uninterrupted in-memory run."""
    kw = dict(vocab="source", config="tiny", max_steps=14, checkpoint_every=1000, progress=False, threads=1,
              log_every=1, batch_tokens=4096, device="cpu")
    first = pretrain(eunomia_events.path, out=tmp_path / "s", stop_after=6, chunk_persons=100, **kw)
    assert not first["finished"]
    assert len(list((tmp_path / "s.work" / "data" / "train").glob("part-*.npz"))) > 20
    pretrain(eunomia_events.path, out=tmp_path / "s", resume=True, chunk_persons=100, **kw)

    def in_memory_prepare(events, vocab, data: Path, config, *, min_count, val_fraction, seed, age_unit,
                          init_vocab, **_):
        tv, train, val, _ = reference(events, config, min_count=min_count, val_fraction=val_fraction, seed=seed,
                                      age_unit=age_unit)
        train.save(data / "train")
        val.save(data / "val")
        tv.save(data / "tokens.json")
        summary = {"train_persons": len(train)}
        (data / "summary.json").write_text(json.dumps(summary))
        return tv, summary

    monkeypatch.setattr(pretrain_module, "prepare", in_memory_prepare)
    monkeypatch.setattr(pretrain_module, "MappedSequences", Sequences.load)     # train from arrays in memory
    pretrain(eunomia_events.path, out=tmp_path / "m", **kw)
    s_rows = json.loads((tmp_path / "s" / "metrics.json").read_text())
    m_rows = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert [r.get("loss") for r in s_rows] == [r.get("loss") for r in m_rows]
    assert (tmp_path / "s" / "model.safetensors").read_bytes() == (tmp_path / "m" / "model.safetensors").read_bytes()


def test_mapped_npz_refuses_compressed_shards(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", a=np.arange(10))
    with pytest.raises(ValueError, match="compressed"):
        mapped_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "u.npz", a=np.arange(10, dtype=np.int16), b=np.zeros(0, np.int64))
    m = mapped_npz(tmp_path / "u.npz")
    assert m["a"].dtype == np.int16 and m["a"].tolist() == list(range(10)) and m["b"].shape == (0,)

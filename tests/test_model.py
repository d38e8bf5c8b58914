"""The BEHRT encoder: shapes, switches, save/load round trip, padding invariance."""
from __future__ import annotations

import json

import pytest
import torch

from omop_behrt.behrt.model import Behrt, BehrtConfig, sinusoidal
from omop_behrt.behrt.tokenizer import SPECIALS, TokenVocabulary

torch.set_num_threads(1)


def vocab(n: int = 40) -> TokenVocabulary:
    return TokenVocabulary(list(SPECIALS) + [f"T/{i}" for i in range(n - len(SPECIALS))],
                           [0] * len(SPECIALS) + [100] * (n - len(SPECIALS)), min_count=10)


def batch(lengths: list[int], V: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.randint(5, V, (len(lengths), T), generator=g) * mask
    ids[:, 0] = 2
    pos = torch.cumsum(torch.rand(len(lengths), T, generator=g) < 0.3, 1) * mask
    return {"input_ids": ids, "ages": (30 + pos) * mask, "segments": (pos % 2) * mask, "positions": pos,
            "attention_mask": mask}


def tiny(**kw) -> Behrt:
    torch.manual_seed(0)
    return Behrt(BehrtConfig.preset("tiny", vocab_size=40, **kw)).eval()


def test_config_defaults_are_the_papers():
    c = BehrtConfig()
    assert (c.layers, c.heads, c.hidden, c.intermediate, c.max_len) == (6, 12, 288, 512, 256)
    m = Behrt(BehrtConfig(vocab_size=300))
    assert 4e6 < m.num_params() < 7e6
    with pytest.raises(ValueError, match="unknown config keys"):
        BehrtConfig.from_dict({"hiddenn": 3})


def test_forward_shapes_heads_and_tied_decoder():
    m = tiny(plos=True)
    b = batch([10, 7])
    h = m(**b)
    assert h.shape == (2, 10, 64)
    assert m.mlm_logits(h).shape == (2, 10, 40)
    assert m.plos_logits(h).shape == (2,) and m.pool(h).shape == (2, 64)
    assert not any(n.endswith("decoder.weight") for n, _ in m.named_parameters())   # tied to code embedding
    table = sinusoidal(8, 6)
    assert torch.allclose(table[3, 0], torch.sin(torch.tensor(3.0))) and torch.allclose(table[0, 1], torch.tensor(1.0))


def test_padding_invariance():
    m = tiny(extras={"sex": 3})
    b = batch([9, 23, 4, 16], seed=1)
    b["sex"] = torch.tensor([1, 2, 0, 1])
    full = m(**b)
    for i, n in enumerate([9, 23, 4, 16]):
        alone = m(**{k: v[i:i + 1, :n] for k, v in b.items() if k != "sex"}, sex=b["sex"][i:i + 1])
        torch.testing.assert_close(full[i, :n], alone[0], atol=2e-5, rtol=1e-4)


def test_ablation_switches_and_extras():
    b = batch([12, 12])
    m = tiny(use_age=False, use_segment=False, use_position=False)
    assert m.embeddings.age is None and m.embeddings.segment is None
    other = dict(b, ages=b["ages"] + 7, segments=1 - b["segments"], positions=b["positions"].flip(1))
    torch.testing.assert_close(m(**b), m(**other))
    m = tiny()
    assert not torch.allclose(m(**b), m(**dict(b, ages=b["ages"] + 7)))
    m = tiny(extras={"sex": 3})
    assert not torch.allclose(m(**b, sex=torch.tensor([1, 1])), m(**b, sex=torch.tensor([2, 2])))


def test_concurrent_saves_into_one_directory_leave_one_whole_model(tmp_path):
    """Runs saving different models into one directory at once take turns: the directory ends as one of them,
    whole (before, one run's weights could sit beside the other's config and metadata; loading then failed)."""
    import threading
    models = [tiny() for _ in range(4)]
    for i, m in enumerate(models):
        with torch.no_grad():
            m.embeddings.code.weight.fill_(float(i))
    errors: list[BaseException] = []

    def save(m) -> None:
        try:
            for _ in range(5):
                m.save(tmp_path / "model", vocab(), {"library_version": "test"})
        except BaseException as e:     # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    r = Behrt.load(tmp_path / "model")         # verified: every file from one save
    value = r.embeddings.code.weight[0, 0].item()
    assert value in (0.0, 1.0, 2.0, 3.0) and torch.all(r.embeddings.code.weight == value)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "metadata.json",
                                                                       "model.safetensors", "tokens.json"]


def test_save_load_identical(tmp_path):
    m = tiny(plos=True, extras={"sex": 3})
    m.save(tmp_path / "model", vocab(), {"library_version": "test"})
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == ["config.json", "metadata.json", "model.safetensors", "tokens.json"]
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["vocab_size"] == 40 and cfg["extras"] == {"sex": 3}
    r = Behrt.load(tmp_path / "model")
    assert r.vocab.tokens == vocab().tokens and r.metadata["library_version"] == "test"
    b = batch([11, 5])
    sex = torch.tensor([1, 2])
    assert torch.equal(m(**b, sex=sex), r(**b, sex=sex))
    assert torch.equal(m.plos_logits(m(**b, sex=sex)), r.plos_logits(r(**b, sex=sex)))
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        Behrt.load(tmp_path)


def test_cpu_bf16_autocast_close_to_fp32():
    m = tiny()
    b = batch([12, 30])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(**b)
    torch.testing.assert_close(low.float(), m(**b), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("amx", [False, True])
def test_cpu_bf16_attention_kernel(monkeypatch, amx):
    """Under CPU bf16 autocast, attention runs in fp32 except for inference on a CPU with AMX (faster there in
    bf16); either way the states stay close to fp32 and training gets gradients."""
    import torch.nn.functional as F
    from omop_behrt.behrt import model as model_module
    monkeypatch.setattr(model_module, "BF16_MATRIX_UNITS", amx)
    seen, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: seen.append(q.dtype) or sdpa(q, *a, **k))
    m = tiny()
    b = batch([12, 30])
    with torch.inference_mode():
        ref = m(**b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(**b)
    assert set(seen[len(seen) // 2:]) == {torch.bfloat16 if amx else torch.float32}
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)
    seen.clear()
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(**b).float().pow(2).mean()
    loss.backward()
    assert set(seen) == {torch.float32}          # training: fp32 attention (its bf16 backward is 2.7x slower)
    assert all(p.grad is not None for p in m.blocks.parameters())


def _reseal(path) -> None:
    """Record a model id over the files as they are now (what an older version's save wrote for its files)."""
    from omop_behrt.behrt.model import _id_from, _metadata_digest, file_digests
    meta = json.loads((path / "metadata.json").read_text())
    files = file_digests(path)
    meta |= {"model_id": _id_from(files), "model_files": files | {"metadata.json": _metadata_digest(meta)}}
    (path / "metadata.json").write_text(json.dumps(meta))


def test_config_without_time_tokens_loads_as_before(tmp_path):
    """A model directory from before the option (config.json without the key) loads with time tokens off."""
    m = tiny()
    m.save(tmp_path / "old", vocab(), {})
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    assert cfg.pop("time_tokens") is False
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    _reseal(tmp_path / "old")
    r = Behrt.load(tmp_path / "old")
    assert r.config.time_tokens is False and not r.vocab.has_time_tokens
    b = batch([8, 5])
    assert torch.equal(m(**b), r(**b))


def test_time_tokens_config_and_vocabulary_must_agree(tmp_path):
    from omop_behrt.behrt.model import ModelIntegrityError
    from omop_behrt.behrt.tokenizer import TIME_TOKENS
    timed = TokenVocabulary(list(SPECIALS) + list(TIME_TOKENS) + [f"T/{i}" for i in range(19)],
                            [0] * 21 + [100] * 19, min_count=10)
    torch.manual_seed(0)
    m = Behrt(BehrtConfig.preset("tiny", vocab_size=40, time_tokens=True)).eval()
    m.save(tmp_path / "timed", timed, {})
    assert Behrt.load(tmp_path / "timed").config.time_tokens is True
    cfg = json.loads((tmp_path / "timed" / "config.json").read_text())
    (tmp_path / "timed" / "config.json").write_text(json.dumps(dict(cfg, time_tokens=False)))
    _reseal(tmp_path / "timed")
    with pytest.raises(ModelIntegrityError, match="time_tokens=False but tokens.json holds"):
        Behrt.load(tmp_path / "timed")

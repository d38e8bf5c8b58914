"""The BEHRT encoder (Li et al. 2020) in plain PyTorch, one readable file.

Embeddings = code + age + segment + position (fixed sinusoidal) [+ extras such as sex], LayerNorm, dropout
(``time_tokens``: CEHR-BERT time-gap tokens are codes of the token vocabulary, see :mod:`omop_behrt.behrt.tokenizer`);
N pre-norm encoder blocks on ``F.scaled_dot_product_attention`` with a padding mask; GELU; an MLM head tied
to the code embeddings; a pooler over [CLS]; an optional Med-BERT PLOS head. ``objective="next_visit"``
(CLMBR-style, Steinberg et al. 2021) makes attention causal by visit: a token sees its own and earlier visits
only, so the last visit's states summarise the whole history; the tied head then predicts the next visit's
codes (:class:`omop_behrt.behrt.pretrain.Objective`) and the weights have the same names and shapes as under MLM.
A model directory holds config.json, model.safetensors, tokens.json and metadata.json (no pickles) and nothing
per person; its model id (:func:`model_id`) covers config, tokens and weights, and loading verifies it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from omop_behrt.events import write_json
from omop_behrt.lock import writing_folder
from omop_behrt.behrt.tokenizer import TokenVocabulary


#: pretraining objectives: BEHRT's masked LM, or CLMBR-style next-visit prediction under a causal-by-visit mask
OBJECTIVES = ("mlm", "next_visit")

#: the CPU has bf16 matrix units (Intel AMX). Under bf16 autocast on a CPU, attention runs in fp32 (CPU's fused
#: fp32 kernel is ~3x its bf16 one without AMX, and with AMX its backward is 2.7x faster), except for inference
#: on AMX, where the bf16 kernel is 1.5x faster (bench/RESULTS.md, "The transformer against Hugging Face on a
#: CPU with AMX")
BF16_MATRIX_UNITS = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


@dataclass
class BehrtConfig:
    """Model shape and switches; the defaults are the paper's."""

    vocab_size: int = 0                     # set from the token vocabulary
    hidden: int = 288
    layers: int = 6
    heads: int = 12
    intermediate: int = 512
    max_len: int = 256                      # tokens per sequence (tokenizer truncates to this)
    n_ages: int = 121                       # age buckets (years 0..120; use 1452 for months)
    age_unit: str = "year"
    n_segments: int = 2
    dropout: float = 0.1
    attn_dropout: float = 0.0               # the paper: 0.1; > 0 makes CPU SDPA leave its fused kernel (30x slower)
    use_age: bool = True                    # the paper's ablation switches
    use_segment: bool = True
    use_position: bool = True
    extras: dict[str, int] = field(default_factory=dict)   # per-sequence extra embeddings, e.g. {"sex": 3}
    plos: bool = False                      # Med-BERT prolonged-length-of-stay head on [CLS]
    time_tokens: bool = False               # CEHR-BERT time-gap tokens between visits (in the token vocabulary)
    objective: str = "mlm"                  # "mlm" (BEHRT) or "next_visit" (CLMBR-style: causal by visit)
    norm_eps: float = 1e-12
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}; got {self.objective!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "BehrtConfig":
        """``behrt`` (the paper), ``tiny`` (tests), or a path to a config.json."""
        presets = {"behrt": {}, "tiny": dict(hidden=64, layers=2, heads=4, intermediate=128, max_len=64)}
        if name in presets:
            return cls(**{**presets[name], **overrides})
        p = Path(name)
        if not p.exists():
            raise ValueError(f"config must be one of {sorted(presets)} or a config.json file; got {name!r}")
        return cls.from_dict({**json.loads(p.read_text()), **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "BehrtConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**d)


def sinusoidal(n: int, dim: int) -> torch.Tensor:
    """The fixed sinusoidal table of "Attention is all you need" (n positions x dim)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table.float()


class Embeddings(nn.Module):
    """code + age + segment + position (+ extras), then LayerNorm and dropout."""

    def __init__(self, c: BehrtConfig):
        super().__init__()
        self.c = c
        self.code = nn.Embedding(c.vocab_size, c.hidden)
        self.age = nn.Embedding(c.n_ages, c.hidden) if c.use_age else None
        self.segment = nn.Embedding(c.n_segments, c.hidden) if c.use_segment else None
        self.register_buffer("position", sinusoidal(c.max_len, c.hidden), persistent=False)
        self.extras = nn.ModuleDict({k: nn.Embedding(n, c.hidden) for k, n in c.extras.items()})
        self.norm = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, input_ids, ages, segments, positions, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.code(input_ids)
        if self.age is not None:
            x = x + self.age(ages.clamp(0, self.c.n_ages - 1))
        if self.segment is not None:
            x = x + self.segment(segments)
        if self.c.use_position:
            x = x + self.position[positions.clamp(0, self.c.max_len - 1)]
        for name, emb in self.extras.items():
            if name not in extras:
                raise ValueError(f"this model has an extra {name!r} embedding: pass {name}=<ids (B,) or (B, T)>")
            v = extras[name]
            x = x + (emb(v)[:, None, :] if v.dim() == 1 else emb(v))  # per sequence or per token
        return self.drop(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, c: BehrtConfig):
        super().__init__()
        assert c.hidden % c.heads == 0, "hidden must be a multiple of heads"
        self.heads, self.p = c.heads, c.attn_dropout
        self.qkv = nn.Linear(c.hidden, 3 * c.hidden)
        self.out = nn.Linear(c.hidden, c.hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) -> (B, T, H); with ``rows`` (B, Q) token indices, only those queries: (B, Q, H)."""
        B, T, H = x.shape
        if rows is None:
            q, k, v = self.qkv(x).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        else:                                          # keys and values of every token, queries of ``rows`` only
            w, b = self.qkv.weight, self.qkv.bias
            k, v = F.linear(x, w[H:], b[H:]).view(B, T, 2, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
            xq = x.gather(1, rows[..., None].expand(*rows.shape, H))
            q = F.linear(xq, w[:H], b[:H]).view(B, rows.shape[1], self.heads, H // self.heads).transpose(1, 2)
            if mask is not None and mask.shape[-2] == T:
                mask = mask.gather(2, rows[:, None, :, None].expand(B, mask.shape[1], rows.shape[1], T))
            T = rows.shape[1]
        p = self.p if self.training else 0.0
        if x.device.type == "cpu" and q.dtype == torch.bfloat16 and (q.requires_grad or not BF16_MATRIX_UNITS):
            with torch.autocast("cpu", enabled=False):   # CPU's fp32 fused attention is faster: see BF16_MATRIX_UNITS
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, H))


class Block(nn.Module):
    """Pre-norm transformer encoder block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, c: BehrtConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.attn = SelfAttention(c)
        self.ln2 = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.mlp = nn.Sequential(nn.Linear(c.hidden, c.intermediate), nn.GELU(), nn.Linear(c.intermediate, c.hidden))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``rows`` (B, Q): the block's output at those tokens only (B, Q, H); keys and values still see all."""
        res = x if rows is None else x.gather(1, rows[..., None].expand(*rows.shape, x.shape[-1]))
        x = res + self.drop(self.attn(self.ln1(x), mask, rows))
        return x + self.drop(self.mlp(self.ln2(x)))


class Behrt(nn.Module):
    """The encoder with its MLM head (tied to the code embeddings), pooler and optional PLOS head."""

    def __init__(self, config: BehrtConfig):
        super().__init__()
        if config.vocab_size < 6:
            raise ValueError(f"vocab_size must be set from the token vocabulary (got {config.vocab_size})")
        self.config = c = config
        self.embeddings = Embeddings(c)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.mlm_transform = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.GELU(),
                                           nn.LayerNorm(c.hidden, eps=c.norm_eps))
        self.mlm_bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.pooler = nn.Linear(c.hidden, c.hidden)
        self.plos_head = nn.Linear(c.hidden, 1) if c.plos else None
        self.apply(self._init)
        self.vocab: TokenVocabulary | None = None
        self.metadata: dict = {}

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, ages: torch.Tensor, segments: torch.Tensor,
                positions: torch.Tensor, attention_mask: torch.Tensor | None = None,
                seq_index: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                **extras: torch.Tensor) -> torch.Tensor:
        """Token ids and attributes (B, T), attention_mask (B, T) True on real tokens -> hidden states (B, T, H).

        ``seq_index`` (B, T): packed rows (:mod:`omop_behrt.behrt.packing`), the sequence each token belongs
        to (-1 on padding); attention then stays within each sequence (a block-diagonal mask).
        ``keep`` (B, T) bool: only those tokens' states are wanted (masked tokens, [CLS]): returns
        ``hidden[keep]`` (N, H), the last block computing queries, attention output and MLP for them alone."""
        x = self.embeddings(input_ids, ages, segments, positions, extras)
        mask = self.attention_mask(positions, attention_mask, seq_index)
        rows = valid = None
        if keep is not None:                  # each row's kept tokens first, padded with token 0 (dropped below)
            count = keep.sum(1)
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :max(1, int(count.max()))]
            valid = torch.arange(order.shape[1], device=keep.device)[None, :] < count[:, None]
            rows = order.masked_fill(~valid, 0)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rows if i == len(self.blocks) - 1 else None)
        x = self.ln_f(x)
        return x if keep is None else x[valid]

    def attention_mask(self, positions: torch.Tensor, attention_mask: torch.Tensor | None,
                       seq_index: torch.Tensor | None = None) -> torch.Tensor | None:
        """SDPA's boolean mask (True: may attend): padding only (B, 1, 1, T) under MLM; under ``next_visit`` also
        causal by visit (B, 1, T, T): query i sees key j iff positions[j] <= positions[i] (visit indices).
        Packed rows (``seq_index``): block-diagonal (B, 1, T, T), each sequence its own block (and causal by
        visit inside it under ``next_visit``); padding attends to padding, so no row is empty."""
        if seq_index is not None:
            mask = seq_index[:, :, None] == seq_index[:, None, :]
            if self.config.objective == "next_visit":
                mask = mask & (positions[:, None, :] <= positions[:, :, None])
            return mask[:, None]
        if self.config.objective == "next_visit":
            mask = positions[:, None, :] <= positions[:, :, None]
            if attention_mask is not None:   # a padded query (position 0) still sees [CLS]: no empty row, no NaN
                mask = mask & attention_mask[:, None, :]
            return mask[:, None]
        return None if attention_mask is None else attention_mask[:, None, None, :]

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary for some hidden states (..., H), decoder tied to the code embeddings."""
        return F.linear(self.mlm_transform(hidden), self.embeddings.code.weight, self.mlm_bias)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The pooled [CLS] vector (B, H): tanh(W h_cls + b), as in BERT."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def plos_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Med-BERT prolonged-length-of-stay logit per sequence (B,)."""
        return self.plos_head(self.pool(hidden)).squeeze(-1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path, vocab: TokenVocabulary | None = None, metadata: dict | None = None) -> Path:
        """Write the model directory (config.json, model.safetensors, tokens.json, metadata.json), each atomically.

        metadata.json gets ``model_id`` (see :func:`model_id`) and ``model_files`` (a digest per file), which
        :meth:`load` checks; it is written last, so a directory cut short by a crash fails that check.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        vocab = vocab or self.vocab
        if vocab is None or len(vocab) != self.config.vocab_size:
            raise ValueError("save needs the token vocabulary the model was built with")
        with writing_folder(path, "a model"):
            return self._save_held(path, vocab, metadata)

    def _save_held(self, path: Path, vocab: TokenVocabulary, metadata: dict | None) -> Path:
        """:meth:`save` once it holds the directory."""
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        tmp = path / f"model.safetensors.{os.getpid()}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path / "model.safetensors")
        vocab.save(path / "tokens.json")
        write_json(asdict(self.config), path / "config.json")
        meta = {k: v for k, v in (metadata if metadata is not None else self.metadata).items() if k not in INTEGRITY}
        meta["vocab_sha256"] = vocab.sha256
        files = file_digests(path)
        meta = json.loads(json.dumps(meta, default=str))         # as it will read back (str keys, lists)
        meta |= {"model_id": _id_from(files), "model_files": files | {"metadata.json": _metadata_digest(meta)}}
        write_json(meta, path / "metadata.json")
        self.metadata = meta
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Behrt":
        """Read a model directory, verified; the model comes back in eval mode with ``.vocab`` and ``.metadata``.

        Files changed after :meth:`save` (the recorded model id or a file digest disagrees) and sizes that do
        not agree (config vocab_size, tokens.json, weight shapes) raise one :class:`ModelIntegrityError`. A
        directory from before model ids were recorded loads with a :class:`ModelIntegrityWarning`.
        """
        path = Path(path)
        for name in ("config.json", "model.safetensors", "tokens.json", "metadata.json"):
            if not (path / name).exists():
                raise FileNotFoundError(f"{path} is not a model directory: {name} is missing")
        config, meta = _read_json(path / "config.json"), _read_json(path / "metadata.json")
        verify_files(path, meta)
        try:
            vocab = TokenVocabulary.load(path / "tokens.json")
        except (ValueError, KeyError, TypeError) as e:
            raise ModelIntegrityError(f"{path}/tokens.json is not a token vocabulary: {e}") from None
        if vocab.sha256 != meta.get("vocab_sha256", vocab.sha256):
            raise ModelIntegrityError(f"{path}: tokens.json does not match the vocabulary the model was trained "
                                      "with (vocab_sha256 in metadata.json)")
        try:
            cfg = BehrtConfig.from_dict(config)
        except (ValueError, TypeError) as e:
            raise ModelIntegrityError(f"{path}/config.json: {e}") from None
        model = check_shapes(path, cfg, vocab)
        if cfg.time_tokens != vocab.has_time_tokens:
            raise ModelIntegrityError(f"{path}: config.json says time_tokens={cfg.time_tokens} but tokens.json "
                                      f"{'holds' if vocab.has_time_tokens else 'lacks'} the time-gap tokens")
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        model.vocab, model.metadata = vocab, meta
        return model.to(device).eval()


# -- model directory integrity ----------------------------------------------------------------------
class ModelIntegrityError(ValueError):
    """A model directory whose files were changed after saving, or whose files disagree with each other."""


class ModelIntegrityWarning(UserWarning):
    """A model directory without a recorded model id (written before ids were recorded): not verified."""


INTEGRITY = ("model_id", "model_files")
ID_FILES = ("config.json", "tokens.json", "model.safetensors")


def canonical_json(obj) -> bytes:
    """JSON with sorted keys and no whitespace: the same content always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelIntegrityError(f"{path} is not valid JSON: {e}") from None


def file_digests(path: str | Path) -> dict[str, str]:
    """sha256 per file of the model id: config.json and tokens.json as canonical JSON, the weights as bytes."""
    path = Path(path)
    out = {name: hashlib.sha256(canonical_json(_read_json(path / name))).hexdigest() for name in ID_FILES[:2]}
    h = hashlib.sha256()
    with open(path / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return out | {"model.safetensors": h.hexdigest()}


def _id_from(files: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}\0{files[name]}\n" for name in ID_FILES).encode()).hexdigest()


def _metadata_digest(meta: dict) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in meta.items() if k not in INTEGRITY})).hexdigest()


def model_id(model_dir: str | Path) -> str:
    """The model id: sha256 (hex) over config.json, tokens.json (both as canonical JSON) and model.safetensors.

    Re-serialising the same content (key order, indentation) keeps the id; any change to the configuration,
    the token ids or counts, or the weights gives another id. Computed from the files, never read back.
    """
    return _id_from(file_digests(model_dir))


def verify_files(path: Path, meta: dict) -> None:
    """Compare the files with the model id and digests metadata.json recorded at save time."""
    if "model_id" not in meta:
        warnings.warn(f"{path}: no model id recorded (saved by an older version), so its files are not verified; "
                      "re-save it (Behrt.load(p).save(p)) to record one", ModelIntegrityWarning, stacklevel=3)
        return
    files = file_digests(path)
    recorded = meta.get("model_files") or {}
    changed = [n for n in ID_FILES if recorded.get(n) != files[n]]
    if recorded.get("metadata.json") != _metadata_digest(meta):
        changed.append("metadata.json")
    if _id_from(files) != meta["model_id"] and not changed:
        changed = list(ID_FILES)          # digests missing: say which files the id covers
    if changed:
        what = " and ".join(changed)
        raise ModelIntegrityError(f"{path}: {what} {'was' if len(changed) == 1 else 'were'} changed after the "
                                  f"model was saved (model id mismatch); use the directory as saved, or retrain")


def check_shapes(path: Path, cfg: BehrtConfig, vocab: TokenVocabulary) -> "Behrt":
    """Sizes agree (config vocab_size, tokens.json, weights): one clear error instead of torch's size mismatch.
    Returns the model ``cfg`` describes (freshly initialised), whose shapes were compared: built for real, not on
    the meta device, whose first use costs ~0.9 s per process against milliseconds for a model this size."""
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    rows = shapes.get("embeddings.code.weight", [None])[0]
    if not cfg.vocab_size == len(vocab) == rows:
        raise ModelIntegrityError(f"{path}: sizes do not agree: config.json vocab_size {cfg.vocab_size}, tokens.json "
                                  f"{len(vocab)} tokens, model.safetensors {rows} code-embedding rows")
    try:
        model = Behrt(cfg)
    except (ValueError, AssertionError) as e:
        raise ModelIntegrityError(f"{path}/config.json does not describe a model: {e}") from None
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    problems = [f"{k} missing" for k in expected if k not in shapes]
    problems += [f"{k} unexpected" for k in shapes if k not in expected]
    problems += [f"{k} is {shapes[k]} in the weights but {v} by config.json" for k, v in expected.items()
                 if k in shapes and shapes[k] != v]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelIntegrityError(f"{path}: config.json does not match model.safetensors: "
                                  + "; ".join(problems[:3]) + more)
    return model


def pool(model: "Behrt", hidden: torch.Tensor, batch: dict, pooling: str) -> torch.Tensor:
    """One vector per sequence: the pooled [CLS] (BEHRT), the mean of real tokens, or the last visit's mean
    (what a next-visit model is trained to summarise at); shared by embedding and the fine-tuning heads.
    A packed batch (``seq_index`` in it) gives one vector per packed sequence, in its order."""
    if "seq_index" in batch:
        from omop_behrt.behrt.packing import packed_pool
        return packed_pool(hidden, batch, pooling, model.pooler)
    if pooling == "cls":
        return model.pool(hidden)
    mask = batch["attention_mask"]
    if pooling == "last_visit":
        pos = batch["positions"].masked_fill(~mask, -1)
        last = pos.max(dim=1, keepdim=True).values
        mask = mask & (pos == last)
    w = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)

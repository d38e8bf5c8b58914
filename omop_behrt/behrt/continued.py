"""Continued pretraining of a shared model (`pretrain --init MODEL_DIR`): its checks, vocabulary and weights.

A model trained at one site starts the local run: same configuration and vocabulary spec (a clash is an
error naming each option), the token vocabulary extended by local tokens seen in >= min_count local persons
(the init model's ids kept), and the new code rows started at their nearest known ancestor's vector
(:mod:`omop_behrt.vocab.fallback`), else at the mean of the init model's code rows.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from omop_behrt.behrt.model import Behrt, BehrtConfig
from omop_behrt.behrt.tokenizer import TokenVocabulary


def extend_vocabulary(init: TokenVocabulary, local: TokenVocabulary) -> TokenVocabulary:
    """The init model's vocabulary (same ids) followed by the local tokens it lacks (seen in >= min_count local
    persons), most frequent first; counts are each token's persons where it was counted (shareable both)."""
    known = set(init.tokens)
    added = [(t, c) for t, c in zip(local.tokens, local.counts) if t not in known]
    return TokenVocabulary(list(init.tokens) + [t for t, _ in added], list(init.counts) + [c for _, c in added],
                           min_count=min(init.min_count, local.min_count), persons=local.persons)


def continue_vocabulary(init: TokenVocabulary, local: TokenVocabulary, tokens: pa.Table
                        ) -> tuple[TokenVocabulary, dict, pa.Table]:
    """Continued pretraining's vocabulary, what it added (counts only) and the local tokens with the fallback
    applied (a token rare here and unknown to the init model becomes its nearest known ancestor)."""
    from omop_behrt.vocab.fallback import apply, fallback_map
    tv = extend_vocabulary(init, local)
    new = pa.array(tv.tokens[len(init):], pa.string())
    from_ancestor = fallback_map(new, init).num_rows
    _, init_cov, _ = apply(tokens, init)          # what the init model alone covers of the local events
    tokens, cov, _ = apply(tokens, tv)
    return tv, {"init_tokens": len(init), "added_tokens": len(new), "added_from_ancestor": from_ancestor,
                "added_from_mean": len(new) - from_ancestor, "init_coverage": init_cov, "coverage": cov}, tokens


def init_weights(core: Behrt, init: Behrt, tv: TokenVocabulary) -> None:
    """Start ``core`` from the init model's weights; the code-embedding rows (and MLM biases) of the tokens the
    vocabulary added start at their nearest known ancestor's, else at the mean of the init model's code rows."""
    from omop_behrt.vocab.fallback import fallback_map
    n = len(init.vocab)
    if tv.tokens[:n] != init.vocab.tokens:
        raise ValueError("internal error: the extended vocabulary does not start with the init model's tokens")
    state = {k: v.detach().clone() for k, v in init.state_dict().items()}
    emb, bias = state["embeddings.code.weight"], state["mlm_bias"]
    codes = torch.as_tensor(np.asarray(init.vocab.counts) > 0)
    rows = emb[codes].mean(0, keepdim=True).repeat(len(tv) - n, 1)
    biases = bias[codes].mean().repeat(len(tv) - n)
    m = fallback_map(pa.array(tv.tokens[n:], pa.string()), init.vocab)
    if m.num_rows:
        new_pos = pc.index_in(m.column("token"), value_set=pa.array(tv.tokens[n:], pa.string())).to_numpy()
        anc = torch.as_tensor(init.vocab.encode(m.column("fallback")).astype(np.int64))
        rows[torch.as_tensor(new_pos)] = emb[anc]
        biases[torch.as_tensor(new_pos)] = bias[anc]
    state["embeddings.code.weight"] = torch.cat([emb, rows])
    state["mlm_bias"] = torch.cat([bias, biases])
    core.load_state_dict(state)


ARCHITECTURE = ("hidden", "layers", "heads", "intermediate", "max_len", "n_segments", "dropout", "attn_dropout",
                "use_age", "use_segment", "use_position", "norm_eps", "init_std", "time_tokens")


def init_model_for(init: str | Path, config, vocab: str | None, *, plos: bool, sex: bool, age_unit: str | None
                ) -> tuple[Behrt, BehrtConfig, str]:
    """The init model of continued pretraining (verified), its configuration and vocabulary spec, after checking
    that nothing asked for disagrees with them."""
    model = Behrt.load(init)
    if "model_id" not in model.metadata:
        from omop_behrt.behrt.model import model_id
        model.metadata["model_id"] = model_id(init)
    icfg = model.config
    clash = []
    if config is not None:
        asked = config if isinstance(config, BehrtConfig) else BehrtConfig.preset(config)
        clash += [f"{k} {getattr(asked, k)} (init model: {getattr(icfg, k)})" for k in ARCHITECTURE
                  if getattr(asked, k) != getattr(icfg, k, None)]
    if plos and not icfg.plos:
        clash.append("plos (the init model has no PLOS head)")
    if sex and "sex" not in icfg.extras:
        clash.append("sex (the init model has no sex embedding)")
    if age_unit is not None and age_unit != icfg.age_unit:
        clash.append(f"age_unit {age_unit} (init model: {icfg.age_unit})")
    ivocab = model.metadata.get("vocab", "source")
    if vocab is not None and vocab != ivocab:
        clash.append(f"vocab {vocab!r} (init model: {ivocab!r})")
    if clash:
        raise ValueError(f"--init {init}: continued pretraining keeps the init model's configuration and "
                         f"vocabulary, but these options disagree with it: {'; '.join(clash)}. Leave them out")
    return model, BehrtConfig.from_dict(asdict(icfg)), ivocab

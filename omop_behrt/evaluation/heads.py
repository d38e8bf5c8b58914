"""Prediction heads: the linear probe on frozen embeddings, Med-BERT-style fine-tuning, BEHRT's multi-label head.

- :class:`LinearProbe`: frozen patient vectors + any scikit-learn classifier (standardised logistic regression
  by default).
- :class:`FineTunedBehrt`: the encoder + an FFN over the pooled [CLS] or a bidirectional GRU over the token
  outputs (Med-BERT), trained end to end with class weighting and early stopping on a validation split;
  ``pretrained=False`` trains the same architecture from random weights (the paper's comparison).
- :class:`MultiLabelBehrt`: BEHRT's T1-T3 head, pooled -> linear -> sigmoid over the disease tokens.

Both torch heads take :class:`omop_behrt.behrt.tokenizer.Sequences` as X, follow scikit-learn's estimator contract
(``fit``, ``predict_proba``, ``predict``, cloning) and save as a directory (config.json, head.json,
tokens.json, model.safetensors; no pickles).
"""
from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from omop_behrt.behrt.model import Behrt, BehrtConfig, pool
from omop_behrt.lock import writing_folder
from omop_behrt.behrt.tokenizer import Sequences, TokenVocabulary

from omop_behrt.choices import HEADS


@functools.lru_cache(maxsize=2)
def _load_pretrained(path: str, stamp: tuple[int, int]) -> Behrt:
    """One read of a model directory per (path, model.safetensors mtime and size): few-shot fits share it.

    Callers copy the weights out (``load_state_dict`` copies) and never change this model.
    """
    return Behrt.load(path)


def _pretrained(model_dir) -> Behrt:
    """The pretrained encoder for ``model_dir`` (a model directory, or an already loaded :class:`Behrt`)."""
    if isinstance(model_dir, Behrt):
        return model_dir
    path = Path(model_dir).resolve()
    st = (path / "model.safetensors").stat() if (path / "model.safetensors").exists() else None
    return _load_pretrained(str(path), (st.st_mtime_ns, st.st_size) if st else (0, 0))


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Frozen embeddings -> any sklearn classifier (default: StandardScaler + LogisticRegression)."""

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, X, y):
        est = self.estimator if self.estimator is not None else make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
        self.estimator_ = clone(est).fit(np.asarray(X), y)
        self.classes_ = self.estimator_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.estimator_.predict_proba(np.asarray(X))

    def predict(self, X) -> np.ndarray:
        return self.estimator_.predict(np.asarray(X))


class HeadModel(nn.Module):
    """Encoder + head: ``ffn`` / ``linear`` on the pooled [CLS] (on the last visit's mean for a next-visit
    encoder, whose [CLS] sees the first visit only), ``gru`` (bidirectional) over token outputs."""

    def __init__(self, encoder: Behrt, head: str, n_out: int, dropout: float = 0.1):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        H = encoder.config.hidden
        self.encoder, self.kind = encoder, head
        if head == "gru":
            self.gru = nn.GRU(H, H // 2, batch_first=True, bidirectional=True)
            self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(H, n_out))
        elif head == "ffn":
            self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(H, H), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(H, n_out))
        else:
            self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(H, n_out))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        extras = {k: batch[k] for k in self.encoder.config.extras}
        hidden = self.encoder(batch["input_ids"], batch["ages"], batch["segments"], batch["positions"],
                              batch["attention_mask"], **extras)
        if self.kind != "gru":       # a next-visit encoder's [CLS] sees the first visit only: its last visit
            causal = getattr(self.encoder.config, "objective", "mlm") == "next_visit"
            return self.out(pool(self.encoder, hidden, batch, "last_visit") if causal else self.encoder.pool(hidden))
        lengths = batch["attention_mask"].sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(hidden, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)                      # (2, B, H/2): last forward and backward states
        return self.out(torch.cat([h[0], h[1]], dim=-1))


#: what early stopping watches on the validation rows: the training loss (class-weighted BCE) or the AUROC
EARLY_STOPPING = ("loss", "auroc")


class FineTunedBehrt(ClassifierMixin, BaseEstimator):
    """Med-BERT-style single-disease fine-tuning of a BEHRT encoder (X: Sequences, y: 0/1).

    ``model_dir``: a pretrained model directory (read once per process and path, however many fits) or an
    already loaded :class:`~omop_behrt.behrt.model.Behrt`; every fit starts from its own copy of the weights.
    ``progress``: a progress bar over the epochs.
    """

    _multilabel = False
    #: called as ``(epoch, n_epochs, postfix)`` after every epoch (progress relayed from a worker process)
    _on_epoch = None

    def __init__(self, model_dir=None, *, pretrained: bool = True, head: str = "ffn", epochs: int = 10,
                 lr: float = 1e-4, head_lr: float = 1e-3, weight_decay: float = 0.01, batch_tokens: int = 4096,
                 patience: int = 3, class_weight: str | None = "balanced", val_fraction: float = 0.15,
                 dropout: float = 0.1, min_steps: int = 100, seed: int = 0, device: str = "cpu",
                 progress: bool = False, early_stopping: str = "loss", calibrate: bool = True):
        self.model_dir = model_dir
        self.pretrained = pretrained
        self.head = head
        self.epochs = epochs
        self.lr = lr
        self.head_lr = head_lr
        self.weight_decay = weight_decay
        self.batch_tokens = batch_tokens
        self.patience = patience
        self.class_weight = class_weight
        self.val_fraction = val_fraction
        self.dropout = dropout
        self.min_steps = min_steps
        self.seed = seed
        self.device = device
        self.progress = progress
        self.early_stopping = early_stopping
        self.calibrate = calibrate

    # -- building --------------------------------------------------------------------------------
    def _build(self, n_out: int) -> HeadModel:
        if self.model_dir is None:
            raise ValueError("FineTunedBehrt needs model_dir: a pretrained model directory (its config and "
                             "vocabulary are used also when pretrained=False)")
        base = _pretrained(self.model_dir)
        torch.manual_seed(self.seed)
        enc = Behrt(copy.deepcopy(base.config))         # this fit's own weights (RNG use as a fresh load)
        if self.pretrained:
            enc.load_state_dict(base.state_dict())       # copies: the shared model stays untouched
            enc.eval()
        else:
            enc = Behrt(enc.config)
        enc.vocab, enc.metadata = base.vocab, dict(base.metadata)
        self.vocab_ = enc.vocab
        return HeadModel(enc, self.head, n_out, self.dropout)

    def _targets(self, y) -> np.ndarray:
        y = np.asarray(y)
        if self._multilabel:
            if y.ndim != 2:
                raise ValueError(f"multi-label targets must be 2-D (patients x diseases); got shape {y.shape}")
            return y.astype(np.float32)
        if y.ndim != 1 or not set(np.unique(y).tolist()) <= {0, 1}:
            raise ValueError("binary targets must be a 1-D array of 0/1 labels")
        return y.astype(np.float32)[:, None]

    def _device_batches(self, seqs: Sequences, epoch: int = 0, shuffle: bool = False):
        from omop_behrt.behrt.batches import device_batches
        return device_batches(seqs, self.batch_tokens, torch.device(self.device), self.model_.encoder.config.extras,
                              self.seed, epoch, shuffle)

    @torch.no_grad()
    def _logits(self, seqs: Sequences) -> np.ndarray:
        self.model_.eval()
        out = np.zeros((len(seqs), self.n_outputs_), np.float32)
        for idx, b in self._device_batches(seqs):
            out[idx] = self.model_(b).float().cpu().numpy()
        return out

    # -- sklearn API ------------------------------------------------------------------------------
    def fit(self, X: Sequences, y, eval_set: tuple[Sequences, np.ndarray] | None = None):
        """Train end to end; early stopping on ``eval_set`` (else a seeded ``val_fraction`` of X, by row)."""
        from omop_behrt.behrt.batches import batches, token_budget
        if self.early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}")
        Y = self._targets(y)
        # what share of the site's events the (possibly foreign) encoder covers: aggregates, from the tokenising
        self.coverage_ = (X.meta or {}).get("coverage")
        if eval_set is None:
            val = np.random.default_rng(self.seed).random(len(X)) < self.val_fraction
            Xv, Yv = X.select(np.flatnonzero(val)), Y[val]
            X, Y = X.select(np.flatnonzero(~val)), Y[~val]
        else:
            Xv, Yv = eval_set[0], self._targets(eval_set[1])
        self.n_outputs_ = Y.shape[1]
        self.classes_ = np.arange(2) if not self._multilabel else np.arange(self.n_outputs_)
        dev = torch.device(self.device)
        self.model_ = self._build(self.n_outputs_).to(dev)
        pos = Y.sum(0)
        pw = np.where(pos > 0, (len(Y) - pos) / np.maximum(pos, 1), 1.0) if self.class_weight == "balanced" \
            else np.ones_like(pos)
        pos_weight = torch.tensor(pw, dtype=torch.float32, device=dev)
        enc_params = list(self.model_.encoder.parameters())
        head_params = [p for n, p in self.model_.named_parameters() if not n.startswith("encoder.")]
        opt = torch.optim.AdamW([{"params": enc_params, "lr": self.lr}, {"params": head_params, "lr": self.head_lr}],
                                weight_decay=self.weight_decay)
        gen_state = torch.get_rng_state()
        torch.manual_seed(self.seed)
        best, best_state, bad, self.history_, steps, post = -np.inf, None, 0, [], 0, {}
        per_epoch = max(1, len(batches(X.lengths, token_budget(X, self.batch_tokens), self.seed, 0, shuffle=False)))
        n_epochs = max(self.epochs, -(-self.min_steps // per_epoch))     # small data: at least min_steps steps
        every = max(1, n_epochs // max(self.epochs, 1))                  # and then at most ~epochs validations
        auroc = self.early_stopping == "auroc" and not self._multilabel and 0 < Yv.sum() < len(Yv)
        what = "val_auroc" if auroc else "val_loss"
        bar = tqdm(range(n_epochs), desc=f"fine-tune ({'pretrained' if self.pretrained else 'scratch'}, "
                   f"{len(X):,} rows)", unit="epoch", disable=not self.progress, leave=False, dynamic_ncols=True)
        for epoch in bar:
            self.model_.train()
            total, n = 0.0, 0
            for idx, b in self._device_batches(X, epoch, shuffle=True):
                logits = self.model_(b)
                loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(Y[idx]).to(dev),
                                                          pos_weight=pos_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model_.parameters(), 1.0)
                opt.step()
                steps += 1
                total, n = total + float(loss.detach()) * len(idx), n + len(idx)
            validated = (epoch + 1) % every == 0 or epoch + 1 == n_epochs
            if validated:
                score = self._score(Xv, Yv, pos_weight)
                self.history_.append({"epoch": epoch, "train_loss": total / max(n, 1), "val_score": score})
                post = {"loss": f"{total / max(n, 1):.3f}", what: f"{score if auroc else -score:.3f}"}
                bar.set_postfix(post, refresh=False)
                if score > best + 1e-6:
                    best, best_state, bad = score, copy.deepcopy(self.model_.state_dict()), 0
                else:
                    bad += 1
            if self._on_epoch is not None:
                self._on_epoch(epoch, n_epochs, post)
            if validated and bad >= self.patience and steps >= self.min_steps:
                break
        bar.close()
        torch.set_rng_state(gen_state)
        if best_state is not None:
            self.model_.load_state_dict(best_state)
        self.model_.eval()
        self.best_score_ = float(best)
        self.calibration_ = self._calibration(Xv, Yv, pw)
        return self

    def _score(self, Xv: Sequences, Yv: np.ndarray, pos_weight: torch.Tensor | None = None) -> float:
        """Validation score for early stopping (higher is better): minus the training loss (class-weighted BCE)
        by default; with ``early_stopping="auroc"`` the AUROC where both classes are present."""
        if len(Xv) == 0:
            return 0.0
        logits = self._logits(Xv)
        if self.early_stopping == "auroc" and not self._multilabel and 0 < Yv.sum() < len(Yv):
            return float(roc_auc_score(Yv[:, 0], logits[:, 0]))
        pw = None if pos_weight is None else pos_weight.detach().cpu()
        return -float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(Yv),
                                                         pos_weight=pw))

    def _calibration(self, Xv: Sequences, Yv: np.ndarray, pos_weight: np.ndarray) -> dict:
        """Platt scaling on the validation rows (binary): risk = sigmoid(a * logit + b). Class weighting shifts
        the logits by log(pos_weight) and a small or collapsed model squeezes them: both made the risks unusable
        (Brier worse than the outcome rate, calibration slope 275). Without both classes in validation only the
        class-weight shift is undone."""
        if self._multilabel or not self.calibrate:
            return {"a": 1.0, "b": 0.0, "how": "none"}
        shift = float(np.log(pos_weight[0])) if pos_weight[0] > 0 else 0.0
        if len(Xv) == 0 or not 0 < Yv.sum() < len(Yv):
            return {"a": 1.0, "b": -shift, "how": "class-weight shift undone (validation lacks a class)"}
        from sklearn.linear_model import LogisticRegression
        z = self._logits(Xv)[:, :1].astype(np.float64)
        fit = LogisticRegression(C=1e4, max_iter=1000).fit(z, Yv[:, 0].astype(int))
        a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
        if a <= 0:      # higher scores did not mean more outcomes on validation: never flip or trust the ranking
            rate = float(Yv[:, 0].mean())
            return {"a": 0.0, "b": float(np.log(rate / (1 - rate))),
                    "how": f"no positive association on the {len(Xv)} validation rows: every risk is their "
                           f"outcome rate ({rate:.3f})"}
        return {"a": a, "b": b, "how": f"Platt scaling on {len(Xv)} validation rows"}

    def predict_proba(self, X: Sequences) -> np.ndarray:
        """Binary: (n, 2) [P(0), P(1)], calibrated on the validation rows; multi-label: (n, diseases) sigmoids."""
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(self, "model_")
        z = self._logits(X)
        if not self._multilabel:
            c = getattr(self, "calibration_", None) or {"a": 1.0, "b": 0.0}
            z = c["a"] * z + c["b"]
        from scipy.special import expit
        p = expit(z)                                  # no overflow warning on large logits
        return p if self._multilabel else np.column_stack([1 - p[:, 0], p[:, 0]])

    def predict(self, X: Sequences) -> np.ndarray:
        p = self.predict_proba(X)
        return (p >= 0.5).astype(int) if self._multilabel else (p[:, 1] >= 0.5).astype(int)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """A head directory: config.json (encoder), head.json, tokens.json, model.safetensors (no pickles)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with writing_folder(path, "a fine-tuned head"):
            return self._save_held(path)

    def _save_held(self, path: Path) -> Path:
        """:meth:`save` once it holds the directory."""
        from omop_behrt.events import write_json
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.model_.state_dict().items()}
        save_file(state, str(path / "model.safetensors.tmp"), metadata={"format": "pt"})
        os.replace(path / "model.safetensors.tmp", path / "model.safetensors")
        self.vocab_.save(path / "tokens.json")
        model_dir = None if isinstance(self.model_dir, Behrt) else str(self.model_dir)
        head = {"class": type(self).__name__, "params": {k: v for k, v in self.get_params().items()
                                                         if k != "model_dir"} | {"model_dir": model_dir},
                "n_outputs": self.n_outputs_, "history": self.history_, "best_score": self.best_score_,
                "calibration": getattr(self, "calibration_", None), "vocab_sha256": self.vocab_.sha256,
                "coverage": getattr(self, "coverage_", None)}
        write_json(asdict(self.model_.encoder.config), path / "config.json")    # as Behrt.save writes it
        write_json(head, path / "head.json")
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "FineTunedBehrt":
        """Read what :meth:`save` wrote; the estimator comes back fitted."""
        path = Path(path)
        for name in ("config.json", "head.json", "tokens.json", "model.safetensors"):
            if not (path / name).exists():
                raise FileNotFoundError(f"{path} is not a fine-tuned head directory: {name} is missing")
        head = json.loads((path / "head.json").read_text())
        klass = {"FineTunedBehrt": FineTunedBehrt, "MultiLabelBehrt": MultiLabelBehrt}[head["class"]]
        params = dict(head["params"], device=device)
        est = klass(**params)
        enc = Behrt(BehrtConfig.from_dict(json.loads((path / "config.json").read_text())))
        enc.vocab = TokenVocabulary.load(path / "tokens.json")
        est.model_ = HeadModel(enc, params["head"], head["n_outputs"], params["dropout"])
        est.model_.load_state_dict(load_file(str(path / "model.safetensors")))
        est.model_.to(device).eval()
        est.vocab_, est.n_outputs_, est.history_ = enc.vocab, head["n_outputs"], head["history"]
        est.best_score_ = head["best_score"]
        est.calibration_ = head.get("calibration") or {"a": 1.0, "b": 0.0, "how": "none"}
        est.coverage_ = head.get("coverage")
        est.classes_ = np.arange(2) if not est._multilabel else np.arange(est.n_outputs_)
        return est


class MultiLabelBehrt(FineTunedBehrt):
    """BEHRT's multi-label head for T1-T3: pooled [CLS] -> linear -> sigmoid over the diseases (Y: n x D)."""

    _multilabel = True

    def __init__(self, model_dir=None, *, pretrained: bool = True, head: str = "linear", epochs: int = 10,
                 lr: float = 1e-4, head_lr: float = 1e-3, weight_decay: float = 0.01, batch_tokens: int = 4096,
                 patience: int = 3, class_weight: str | None = None, val_fraction: float = 0.15,
                 dropout: float = 0.1, min_steps: int = 100, seed: int = 0, device: str = "cpu",
                 progress: bool = False):
        super().__init__(model_dir, pretrained=pretrained, head=head, epochs=epochs, lr=lr, head_lr=head_lr,
                         weight_decay=weight_decay, batch_tokens=batch_tokens, patience=patience,
                         class_weight=class_weight, val_fraction=val_fraction, dropout=dropout,
                         min_steps=min_steps, seed=seed, device=device, progress=progress)

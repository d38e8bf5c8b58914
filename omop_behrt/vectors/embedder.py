"""The scikit-learn face of patient vectors: :class:`PatientEmbedder`, (subject_id, index_date) rows in, vectors
out, with BEHRT (:func:`omop_behrt.vectors.embed.embed_cohort`) or the text encoder
(:func:`omop_behrt.vectors.embed_text.embed_text_cohort`) behind it.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator, TransformerMixin

from omop_behrt.choices import POOLINGS
from omop_behrt.vectors.embed import _as_index, embed_cohort
from omop_behrt.vectors.embed_text import embed_text_cohort


class PatientEmbedder(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: (subject_id, index_date) rows -> (n, d) float32 patient vectors.

    ``encoder="behrt"`` (default) embeds with the pretrained model at ``model_dir``; ``encoder="text"`` serialises
    each record as text and embeds it with ``text_model`` (a local directory or ``default``), no pretraining,
    with the clinical notes before the index date when ``notes`` is ``append`` or ``pooled``.

    ``fit`` loads and checks the model (no learning: the encoder is pretrained) and returns self;
    ``transform`` embeds as of each row's index date. Rows without any history before the index date get the
    model's empty-history vector and are listed in ``skipped_`` after ``transform``.
    """

    def __init__(self, model_dir=None, source=None, *, encoder: str = "behrt", text_model: str = "default",
                 notes: str | None = None, pooling: str = "cls", inclusive: bool = False,
                 batch_tokens: int = 16_384, chunk_persons: int = 20_000, device: str = "auto",
                 precision: str = "auto", cdm_schema: str | None = None, progress: bool = False):
        self.model_dir = model_dir
        self.source = source
        self.encoder = encoder
        self.text_model = text_model
        self.notes = notes
        self.pooling = pooling
        self.inclusive = inclusive
        self.batch_tokens = batch_tokens
        self.chunk_persons = chunk_persons
        self.device = device
        self.precision = precision
        self.cdm_schema = cdm_schema
        self.progress = progress

    def fit(self, X=None, y=None):
        """Load and check the model; when X is given, check it is (subject_id, index_date) rows."""
        from omop_behrt.behrt.model import Behrt
        from omop_behrt.behrt.batches import resolve_device
        if self.encoder not in ("behrt", "text"):
            raise ValueError(f"encoder must be 'behrt' or 'text', got {self.encoder!r}")
        if self.notes not in (None, "none") and self.encoder != "text":
            raise ValueError("notes is for encoder='text' (BEHRT reads codes only)")
        if self.source is None or (self.encoder == "behrt" and self.model_dir is None):
            raise ValueError("PatientEmbedder needs source (an OMOP CDM or an event directory) and, for "
                             "encoder='behrt', model_dir (a pretrained model directory)")
        if self.encoder == "text":      # Hegselmann et al.: the record as text, a language model's vectors
            from omop_behrt.text.encoder import TextEncoder
            if X is not None:
                _as_index(X)
                self.n_features_in_ = 2
            self.model_ = TextEncoder(self.text_model, device=self.device, progress=self.progress)
            self.n_features_out_ = self.model_.dims
            return self
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if X is not None:
            _as_index(X)
            self.n_features_in_ = 2
            if hasattr(X, "columns"):
                self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.model_ = Behrt.load(self.model_dir, device=resolve_device(self.device))
        self.n_features_out_ = self.model_.config.hidden
        return self

    def transform(self, X) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(self, "model_")
        index = _as_index(X)
        if self.encoder == "text":
            res = embed_text_cohort(self.source, index, encoder=self.model_, inclusive=self.inclusive,
                                    cdm_schema=self.cdm_schema, progress=self.progress, notes=self.notes)
        else:
            res = embed_cohort(self.model_dir, self.source, index, pooling=self.pooling, inclusive=self.inclusive,
                               cdm_schema=self.cdm_schema, batch_tokens=self.batch_tokens,
                               chunk_persons=self.chunk_persons, device=self.device, progress=self.progress,
                               precision=self.precision, model=self.model_)
        self.skipped_ = index.filter(pa.array(~res.has_history))
        self.provenance_ = res.provenance
        return res.vectors

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(self, "n_features_out_")
        return np.asarray([f"emb_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.non_deterministic = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

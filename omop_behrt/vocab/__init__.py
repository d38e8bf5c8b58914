"""Vocabularies: local code -> token plug-ins (CALIBER, OMOP concepts, roll-ups, code lists), fallback, coverage.

A plug-in subclasses :class:`Vocabulary` (the contract, in :mod:`omop_behrt.vocab.registry`).
"""
from omop_behrt.vocab.registry import MapContext, Vocabulary, get_vocabulary

__all__ = ["MapContext", "Vocabulary", "get_vocabulary"]

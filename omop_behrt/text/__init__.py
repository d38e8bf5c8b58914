"""The text encoder (Hegselmann et al.): a record serialised as text and embedded by a language model."""

"""Patient vectors from the text encoder (Hegselmann et al.): the record before the index date as text, embedded by
a language model, with the clinical notes appended or pooled. Same result object as BEHRT's
:func:`omop_behrt.vectors.embed.embed_cohort`, so both go to the same tables and heads.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.tasks.cohorts import check_index
from omop_behrt.vectors.embed import EmbeddingResult


def embed_text_cohort(source, index: pa.Table, *, text_model="default", pooling: str | None = None,
                      group: str = "domain", inclusive: bool = False, cdm_schema: str | None = None,
                      vocab_schema: str | None = None, device: str = "auto", work_dir: str | Path | None = None,
                      progress: bool = True, encoder=None, dump_text: str | Path | None = None,
                      notes: str | None = None, cdm=None) -> EmbeddingResult:
    """The text encoder (Hegselmann et al.): each row's record before its index date serialised as text
    (:mod:`omop_behrt.text.serialize`, the same censoring as :func:`embed_cohort`) and embedded by a language model
    (:class:`omop_behrt.text.encoder.TextEncoder`; ``text_model`` a local directory, or ``default``, the packaged
    all-MiniLM-L6-v2). Same result object as :func:`embed_cohort`; the texts themselves are written only to
    ``dump_text`` (a folder, for debugging: patient data, with a warning).

    ``notes`` (clinical notes before the index date): ``append`` them to the record's text, or ``pooled``: embed
    each note on its own and average the notes' mean with the record's vector (:func:`pool_notes`).
    ``cdm``: where concept names come from when ``source`` is an event directory without its own.
    """
    from omop_behrt.text.serialize import dump_text as write_texts, serialize
    from omop_behrt.text.encoder import TextEncoder
    t0 = time.perf_counter()
    index = check_index(index)
    encoder = encoder if encoder is not None else TextEncoder(text_model, pooling=pooling, device=device,
                                                              progress=progress)
    texts = serialize(source, index, inclusive=inclusive, group=group, cdm_schema=cdm_schema,
                      vocab_schema=vocab_schema, work_dir=work_dir, notes=notes, cdm=cdm)
    if dump_text is not None:
        write_texts(texts, dump_text)
    vectors = encoder.encode(texts.texts["text"])
    has_history = texts.texts["n_lines"].to_numpy(zero_copy_only=False) > 0
    if texts.notes is not None:
        vectors, with_notes = pool_notes(vectors, texts.notes, encoder)
        has_history |= with_notes
    unknown = int(texts.provenance["subject not in source"])
    prov = {"encoder": "text", "text_model": encoder.describe(), "serializer_version": texts.version,
            "group": group, "description_coverage": texts.coverage,
            "model_checksum": encoder.checksum(), "pooling": encoder.pooling,
            "index_rule": "events on or before the index date" if inclusive else
            "events strictly before the index date",
            "rows": index.num_rows, "embedded": int(has_history.sum()),
            "skipped": {"no history before index": int((~has_history).sum()) - unknown,
                        "subject not in source": unknown},
            "truncated": texts.provenance["truncated"],
            "seconds": round(time.perf_counter() - t0, 3), "device": str(encoder.device)}
    if "notes" in texts.provenance:
        prov["notes"] = texts.provenance["notes"]
    return EmbeddingResult(index, vectors, has_history, prov)


def pool_notes(vectors: np.ndarray, notes: pa.Table, encoder) -> tuple[np.ndarray, np.ndarray]:
    """Each note embedded once (a note several rows see, or two equal notes, is one text), the notes of a row
    averaged, and that mean averaged with the row's record vector: structured record and narrative weigh the
    same whatever the number of notes. Rows without a note keep their record vector."""
    n = vectors.shape[0]
    with_notes = np.zeros(n, dtype=bool)
    if notes.num_rows == 0:
        return vectors, with_notes
    coded = pc.dictionary_encode(notes["text"].combine_chunks())
    note_vectors = np.asarray(encoder.encode(coded.dictionary), dtype=np.float32)
    rows = notes["row"].to_numpy()
    sums = np.zeros((n, note_vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, rows, note_vectors[coded.indices.to_numpy()])
    counts = np.bincount(rows, minlength=n)
    with_notes = counts > 0
    out = np.array(vectors, dtype=np.float32, copy=True)
    out[with_notes] = ((out[with_notes] + sums[with_notes] / counts[with_notes, None]) / 2).astype(np.float32)
    return out, with_notes

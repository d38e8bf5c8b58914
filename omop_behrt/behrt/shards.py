"""Tokenised sequences on disk, written a chunk of persons at a time and read back memory-mapped.

The layout is :meth:`Sequences.save`'s (``part-*.npz`` shards, uncompressed, no pickles, and
``sequences.json``), so :meth:`Sequences.load` and the shareable check read it as before. :class:`SequenceWriter`
appends one shard per chunk, so tokenising never holds more than a chunk; :class:`MappedSequences` maps each
shard's arrays straight from the file (an uncompressed ``.npz`` member is a ``.npy`` at a fixed offset), so a
training process holds only the per-sequence lengths (int32) and the page cache, whatever the number of persons.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from omop_behrt.behrt.tokenizer import Sequences

_LOCAL_HEADER = 30                      # fixed part of a zip local file header; name and extra follow


def empty_sequences(meta: dict | None = None) -> Sequences:
    """No sequences, with the dtypes :func:`omop_behrt.behrt.tokenizer.tokenize` gives."""
    e = lambda dtype: np.zeros(0, dtype)  # noqa: E731
    return Sequences(np.zeros(1, np.int64), e(np.int32), e(np.int16), e(np.int8), e(np.int16), e(np.int64),
                     e(np.int64), e(np.int8), e(np.int8), dict(meta or {}))


class SequenceWriter:
    """Appends :class:`Sequences` to a directory as ``part-*.npz`` shards; :meth:`close` writes ``sequences.json``.

    Each shard is written under a temporary name and renamed, like :meth:`Sequences.save`; the directory's old
    shards are removed first. Persons are never split across shards.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for old in self.path.glob("part-*.npz"):
            old.unlink()
        (self.path / "sequences.json").unlink(missing_ok=True)
        self.parts, self.sequences, self.tokens = 0, 0, 0

    def write(self, seqs: Sequences) -> None:
        """One shard holding ``seqs`` (nothing for an empty chunk)."""
        if len(seqs) == 0:
            return
        tmp = self.path / f"part-{self.parts:05d}.tmp.npz"
        np.savez(tmp, **{a: np.ascontiguousarray(getattr(seqs, a)) for a in Sequences.ARRAYS})
        os.replace(tmp, self.path / f"part-{self.parts:05d}.npz")
        self.parts += 1
        self.sequences += len(seqs)
        self.tokens += int(seqs.offsets[-1] - seqs.offsets[0])

    def close(self, meta: dict) -> Path:
        """``sequences.json`` (the tokeniser's settings and the totals); one empty shard when nothing came."""
        if self.parts == 0:
            empty_sequences().save(self.path)
            self.parts = 1
        meta = dict(meta, sequences=self.sequences, tokens=self.tokens, parts=self.parts)
        (self.path / "sequences.json").write_text(json.dumps(meta, indent=1))
        return self.path


def mapped_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed ``.npz``, memory-mapped read-only (``np.load`` would read them all).

    One map per file, advised for random access: a batch gathers scattered rows, and the kernel's read-ahead
    would otherwise pull (and count in the process's resident set) pages no batch asked for.
    """
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):
            mm.madvise(mmap.MADV_RANDOM)
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: {info.filename} is compressed; only np.savez shards can be mapped")
            f.seek(info.header_offset)
            local = f.read(_LOCAL_HEADER)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + _LOCAL_HEADER + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject:
                raise ValueError(f"{path}: {info.filename} is not a plain C-ordered array")
            count = int(np.prod(shape))
            out[info.filename.removesuffix(".npy")] = np.frombuffer(mm, dtype=dtype, count=count,
                                                                     offset=f.tell()).reshape(shape)
    return out


class MappedSequences:
    """The shards of a :class:`SequenceWriter` (or :meth:`Sequences.save`) directory, memory-mapped.

    In memory: the lengths (int32 per sequence) and where each shard starts. :meth:`select` gathers rows
    (vectorised, per shard) into an in-memory :class:`Sequences`; only the pages those rows lie on are read.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        files = sorted(self.path.glob("part-*.npz"))
        if not files:
            raise FileNotFoundError(f"{self.path}: no part-*.npz tokenised shards")
        self.meta = json.loads((self.path / "sequences.json").read_text())
        self.parts = []
        for f in files:
            a = mapped_npz(f)
            self.parts.append(Sequences(**{k: a[k] for k in Sequences.ARRAYS}, meta=self.meta))
        sizes = np.array([len(p) for p in self.parts], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.lengths = np.concatenate([np.diff(np.asarray(p.offsets)) for p in self.parts]).astype(np.int32)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _column(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(p, name)) for p in self.parts])

    @property
    def subject_id(self) -> np.ndarray:
        return self._column("subject_id")

    @property
    def plos(self) -> np.ndarray:
        return self._column("plos")

    @property
    def sex(self) -> np.ndarray:
        return self._column("sex")

    def select(self, idx: np.ndarray) -> Sequences:
        """Rows ``idx`` (in that order) as an in-memory :class:`Sequences`, gathered shard by shard."""
        idx = np.asarray(idx, dtype=np.int64)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        order = np.argsort(part, kind="stable")
        pieces = [self.parts[p].select(idx[order][part[order] == p] - self.starts[p]) for p in np.unique(part)]
        if not pieces:
            return empty_sequences(self.meta)
        both = Sequences(np.concatenate([[0], np.cumsum(np.concatenate([s.lengths for s in pieces]))]),
                         *(np.concatenate([getattr(s, a) for s in pieces]) for a in Sequences.ARRAYS[1:]),
                         meta=dict(self.meta))
        return both.select(np.argsort(order, kind="stable"))

"""The visit ids an extraction has seen, kept per table (and Spark partition) as files of sorted distinct ids and
counted by merging the files a block at a time: the driver's memory stays flat however many visits a CDM holds."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _distinct(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort + neighbour compare; faster here than numpy 2's hash-based unique)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


class _SortedIds:
    """A file of sorted distinct ids (np.save), read a block at a time (plain reads: no mapping left resident)."""

    def __init__(self, path: Path, block: int):
        self.path, self.block = path, block
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, self.dtype = read(f)
            self.offset, self.left = f.tell(), int(np.prod(shape))
        self.buf = np.zeros(0, self.dtype)
        self.refill()

    def refill(self) -> None:
        n = min(self.block, self.left)
        if n and not len(self.buf):
            self.buf = np.fromfile(self.path, self.dtype, count=n, offset=self.offset)
            self.offset, self.left = self.offset + n * self.dtype.itemsize, self.left - n


def _visit_counts(files: list[Path], chunk: int = 1 << 22) -> tuple[int, int]:
    """(rebuilt, real) distinct visit ids over ``files`` of sorted distinct ids (negative: rebuilt), merged a block
    of each file at a time: about ``chunk`` ids in memory however many files (Spark: one per table and partition)
    and ids there are, so the driver's memory stays flat as the CDM grows."""
    readers = [r for r in (_SortedIds(f, max(1024, chunk // max(1, len(files)))) for f in files) if len(r.buf)]
    rebuilt = real = 0
    while readers:
        # every id up to the smallest last id of the blocks in hand is in hand: later blocks hold larger ids
        hi = min(r.buf[-1] for r in readers)
        taken = []
        for r in readers:
            k = int(np.searchsorted(r.buf, hi, side="right"))
            taken.append(r.buf[:k])
            r.buf = r.buf[k:]
            r.refill()
        ids = _distinct(np.concatenate(taken))
        rebuilt += int((ids < 0).sum())
        real += int((ids > 0).sum())
        readers = [r for r in readers if len(r.buf)]
    return rebuilt, real

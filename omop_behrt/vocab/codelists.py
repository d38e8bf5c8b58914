"""Code-list vocabularies: ``csv`` (a user's mapping table) and the ``drop`` filter (domains, code lists, SNOMED tags).

Both are plain tables joined to the distinct codes in DuckDB (sql/vocab/csv_map.sql, sql/vocab/drop.sql).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.db.cdm_exports import header_separator
from omop_behrt.db.database import load_sql
from omop_behrt.events import DOMAINS
from omop_behrt.vocab.registry import MapContext, Vocabulary, VocabularyError, split_list


class Csv(Vocabulary):
    """A user's mapping table: CSV with source_vocabulary, source_code, token and an optional priority.

    An event matches a row when its ``code`` or ``source_code`` is ``source_vocabulary/source_code``
    (vocabulary names compared case-insensitively). Several rows for one code give several tokens; with a
    priority column only the rows of the smallest priority for that code are kept.
    """

    name = "csv"
    REQUIRED = ("source_vocabulary", "source_code", "token")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._check_params(["path"])
        if "path" not in self.params:
            raise VocabularyError("vocabulary 'csv' needs a path: csv(path=my_map.csv)")
        self.path = Path(self.params["path"])
        self.table = read_mapping_csv(self.path)

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        return ctx.sql(load_sql("vocab/csv_map.sql"), k=keys, m=self.table)


def read_text(path: Path, what: str) -> str:
    """A text file as UTF-8 (a byte order mark skipped); bytes that are not UTF-8 are an error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise VocabularyError(f"{path}, line {line}: {what} is not UTF-8 (byte {data[e.start]:#04x}; a spreadsheet "
                              f"saved it in a local encoding such as Windows-1252?); save it as CSV UTF-8") from None


def read_mapping_csv(path: Path) -> pa.Table:
    """Read and check a user mapping CSV (',', ';', tab or '|' separated); errors name the file, the row and the
    column."""
    if not path.exists():
        raise VocabularyError(f"csv vocabulary: {path} does not exist")
    text = read_text(path, "the mapping table")
    sep = header_separator(text.split("\n", 1)[0], Csv.REQUIRED)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sep)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in Csv.REQUIRED if c not in header]
    if missing:
        raise VocabularyError(f"{path}: missing column(s) {missing}; expected a header with "
                              f"{', '.join(Csv.REQUIRED)} and optionally priority; found {header}")
    cols: dict[str, list] = {"source_vocabulary": [], "source_code": [], "token": [], "priority": []}
    for i, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        for c in Csv.REQUIRED:
            if not row.get(c):
                raise VocabularyError(f"{path}, row {i}: column {c!r} is empty; every row needs "
                                      f"{', '.join(Csv.REQUIRED)}")
        prio = row.get("priority") or "0"
        try:
            cols["priority"].append(int(prio))
        except ValueError:
            raise VocabularyError(f"{path}, row {i}: column 'priority' is {prio!r}; expected an integer "
                                  f"(smaller wins)") from None
        for c in Csv.REQUIRED:
            cols[c].append(row[c])
    return pa.table({"source_vocabulary": pa.array([v.upper() for v in cols["source_vocabulary"]], pa.string()),
                     "source_code": pa.array(cols["source_code"], pa.string()),
                     "token": pa.array(cols["token"], pa.string()),
                     "priority": pa.array(cols["priority"], pa.int64())})


class Drop(Vocabulary):
    """A filter: drops (on purpose, counted as dropped) codes by ``domain``, by ``codes`` or by SNOMED ``tag``.

    ``codes`` is a ``|``-list of ``VOCAB/code`` or a file with one per line; ``tag`` is a ``|``-list of SNOMED
    semantic tags (finding, situation, ...) looked up in vocab_maps/snomed_synthea_icd10.csv and, where the CDM
    separates disorders from findings (Athena concept_class_id 'Disorder' present), in its concept table.
    """

    name = "drop"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._check_params(["domain", "codes", "tag"])
        if not self.params:
            raise VocabularyError("filter 'drop' needs domain=..., codes=... or tag=... "
                                  "(e.g. drop(tag=finding), drop(domain=measurement|observation))")
        self.domains = split_list(self.params.get("domain"))
        bad = [d for d in self.domains if d not in DOMAINS]
        if bad:
            raise VocabularyError(f"filter 'drop': unknown domain(s) {bad}; expected some of {list(DOMAINS)}")
        self.codes = _codes_param(self.params.get("codes"))
        self.tags = [t.lower() for t in split_list(self.params.get("tag"))]

    def map_keys(self, keys: pa.Table, ctx: MapContext) -> pa.Table:
        from omop_behrt.vocab.caliber import snomed_tags
        tags = snomed_tags(ctx.cdm) if self.tags else pa.table({"code": pa.array([], pa.string()),
                                                               "tag": pa.array([], pa.string())})
        return ctx.sql(load_sql("vocab/drop.sql"), k=keys,
                       d=pa.table({"domain": pa.array(self.domains, pa.string())}),
                       c=pa.table({"code": pa.array(self.codes, pa.string())}),
                       t=tags.filter(pc.is_in(tags.column("tag"), pa.array(self.tags, pa.string()))))


def _codes_param(value: str | None) -> list[str]:
    if not value:
        return []
    p = Path(value)
    if p.suffix in (".txt", ".csv") or p.exists():
        if not p.exists():
            raise VocabularyError(f"filter 'drop': code list file {p} does not exist")
        lines = [ln.split(",")[0].strip() for ln in read_text(p, "the code list").splitlines()]
        codes = [ln for ln in lines if ln and not ln.startswith("#")]
    else:
        codes = split_list(value)
    bad = [c for c in codes if "/" not in c]
    if bad:
        raise VocabularyError(f"filter 'drop': codes must look like VOCAB/code (e.g. SNOMED/160903007); "
                              f"found {bad[0]!r}")
    return codes

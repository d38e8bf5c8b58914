"""Censoring at the index date, layer by layer: an event ON the index date is seen only with ``inclusive``.

Each layer that cuts (the extraction SQL, the fallback's coverage, the tokenizer inside the embedding) is tested
on its own with index dates that fall on event days, against counts and tables computed here independently, so
that a ``<=`` for ``<`` in any one of them fails a test (the other layers no longer mask it).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from omop_behrt import EventDir
from omop_behrt.adapters import omop
from omop_behrt.adapters.omop import ExtractOptions
from omop_behrt.behrt.model import Behrt
from omop_behrt.vectors.embed import embed_cohort
from omop_behrt.vocab.fallback import coverage
from omop_behrt.vocab.mapping import map_events

GI_BLEED = 192671
TABLES = [("condition", "condition_occurrence", "condition_start_date"),
          ("drug", "drug_exposure", "drug_exposure_start_date"),
          ("procedure", "procedure_occurrence", "procedure_date"),
          ("measurement", "measurement", "measurement_date"),
          ("observation", "observation", "observation_date"),
          ("visit", "visit_occurrence", "visit_start_date")]


@pytest.fixture(scope="module")
def index(eunomia_db) -> pa.Table:
    """Each GI-bleed person's first GI-bleed day: every one of them has an event (the bleed) on its index date."""
    con = duckdb.connect(str(eunomia_db), read_only=True)
    t = con.sql(f"""SELECT person_id AS subject_id, CAST(min(condition_start_date) AS TIMESTAMP) AS index_date
                        FROM condition_occurrence WHERE condition_concept_id = {GI_BLEED}
                        GROUP BY 1 ORDER BY 1""").to_arrow_table()
    con.close()
    return t.cast(pa.schema([("subject_id", pa.int64()), ("index_date", pa.timestamp("us"))]))


def _expected(eunomia_db, index: pa.Table, op: str) -> dict[str, int]:
    """Per domain, source rows of the index persons dated ``op`` their index date (and not before birth)."""
    con = duckdb.connect(str(eunomia_db), read_only=True)
    con.register("ix", index)
    out = {}
    for domain, table, day in TABLES:
        out[domain] = con.execute(f"""
            SELECT COUNT(*) FROM {table} e JOIN person p USING (person_id) JOIN ix ON ix.subject_id = e.person_id
            WHERE e.{day} {op} CAST(ix.index_date AS DATE) AND e.{day} >= CAST(p.birth_datetime AS DATE)
            """).fetchall()[0][0]
    con.close()
    return out


@pytest.mark.parametrize("inclusive", [False, True])
def test_extraction_cuts_at_the_index_date(eunomia_db, index, tmp_path, inclusive):
    omop.extract(eunomia_db, tmp_path / "ev", progress=False,
                 options=ExtractOptions(index_dates=index, inclusive=inclusive))
    ev = EventDir.open(tmp_path / "ev").read_events(["subject_id", "time", "domain"])
    got = {k.as_py(): v.as_py() for k, v in zip(*pc.value_counts(ev["domain"]).flatten())}
    expected = _expected(eunomia_db, index, "<=" if inclusive else "<")
    strict, through = _expected(eunomia_db, index, "<"), _expected(eunomia_db, index, "<=")
    assert sum(through.values()) - sum(strict.values()) >= index.num_rows      # the bleeds lie on the index days
    assert {k: v for k, v in expected.items() if v} == got


def test_coverage_counts_only_tokens_before_the_cut(eunomia_events, tiny_model, tmp_path):
    """The site coverage the embedding reports counts the token rows strictly before each cut, not on it."""
    vocab = Behrt.load(tiny_model).vocab
    map_events(eunomia_events, vocab="source", out=tmp_path / "t", progress=False)
    tokens = ds.dataset(str(tmp_path / "t" / "tokens"), format="parquet").to_table(
        columns=["subject_id", "time", "token"])
    # cut each person at the time of their middle token row: a row lies exactly on every cut
    cut = duckdb.sql("SELECT subject_id, quantile_disc(time, 0.5) AS index_time FROM tokens GROUP BY 1")
    cut = cut.to_arrow_table()
    cov = coverage(tokens, vocab, None, cutoff=cut, fallback=False, min_count=0)
    t = tokens.to_pandas().merge(cut.to_pandas(), on="subject_id")
    before = t[t["time"] < t["index_time"]]
    assert (t["time"] == t["index_time"]).sum() >= cut.num_rows
    assert cov["events"] == len(before)
    assert cov["in_model"] == int(before["token"].isin(vocab.index).sum())


def _without(events: EventDir, index: pa.Table, out: Path, keep_index_day: bool) -> EventDir:
    """A copy of the event directory without the index persons' events on/after (or after) their index date."""
    shutil.copytree(events.path, out)
    for f in EventDir.open(out).event_files():
        f.unlink()
    ev = events.read_events()
    con = duckdb.connect()
    con.register("ev", ev)
    con.register("ix", index)
    edge = "ix.index_date + INTERVAL 1 DAY" if keep_index_day else "ix.index_date"
    kept = con.sql(f"""SELECT ev.* FROM ev LEFT JOIN ix USING (subject_id)
                           WHERE ix.index_date IS NULL OR ev.time < {edge}""").to_arrow_table()
    pq.write_table(kept.cast(ev.schema), EventDir.open(out).events_dir / "part-00000.parquet")
    return EventDir.open(out)


def test_embedding_from_events_leaves_out_the_index_day(eunomia_events, tiny_model, index, tmp_path):
    """From an event directory the tokenizer's cut-off censors: the vectors equal those of a directory without
    the index day and later, and with ``inclusive`` those of a directory without only the later days."""
    ix = index.slice(0, 120)
    ix = ix.add_column(0, "cohort_definition_id", pa.array(np.ones(ix.num_rows, np.int64)))
    strict = _without(eunomia_events, ix, tmp_path / "strict", keep_index_day=False)
    through = _without(eunomia_events, ix, tmp_path / "through", keep_index_day=True)
    assert through.events().count_rows() - strict.events().count_rows() >= ix.num_rows
    a = embed_cohort(tiny_model, eunomia_events, ix, progress=False, device="cpu")
    b = embed_cohort(tiny_model, strict, ix, progress=False, device="cpu")
    np.testing.assert_array_equal(a.vectors, b.vectors)
    c = embed_cohort(tiny_model, eunomia_events, ix, inclusive=True, progress=False, device="cpu")
    d = embed_cohort(tiny_model, through, ix, inclusive=True, progress=False, device="cpu")
    np.testing.assert_array_equal(c.vectors, d.vectors)
    changed = np.abs(c.vectors - a.vectors).max(axis=1) > 1e-6
    assert changed.mean() > 0.9                                 # the index-day events do move the vectors

"""The first half of bench/sql_dialects.py: run the code that renders the SQL templates and record what it ran.

:class:`Recorder` catches each template's fragments and every templated statement with its bound values while
:func:`exercise` (a DuckDB CDM) or :func:`exercise_pg` (the Synthea CDM in PostgreSQL) drives extraction, cohorts,
a PLP task, vocabularies, report names and an embedding export through them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

import omop_behrt.db.database as database
from omop_behrt.db.database import TemplateSql, load_sql, render


class Recorder:
    """Records, while active, each template's first fragments and every templated statement a Database runs."""

    def __init__(self):
        self.fragments: dict[str, dict[str, str]] = {}
        self.executed: list[tuple[str, str, dict]] = []
        self._saved: list = []

    def __enter__(self) -> "Recorder":
        orig_render = database.render

        def rec_render(template, fragments):
            name = getattr(template, "template", None)
            if name and name not in self.fragments:
                self.fragments[name] = {k: str(v) for k, v in fragments.items()}
            return orig_render(template, fragments)

        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("omop_behrt") and getattr(mod, "render", None) is orig_render:
                self._saved.append((mod, "render", orig_render))
                mod.render = rec_render
        for cls, meth in ((database.Database, "stream"), (database.Transaction, "execute")):
            orig = getattr(cls, meth)
            self._saved.append((cls, meth, orig))
            setattr(cls, meth, self._wrap(orig))
        return self

    def _wrap(self, orig):
        def run(obj, sql, params=None, *a, **kw):
            if isinstance(sql, TemplateSql):
                self.executed.append((sql.template, sql, dict(params or {})))
            return orig(obj, sql, params, *a, **kw)
        return run

    def __exit__(self, *exc) -> None:
        for owner, attr, orig in reversed(self._saved):
            setattr(owner, attr, orig)


def exercise(source: str, events_dir: Path, embed_target: str) -> None:
    """Run the code that renders the user-database templates against ``source`` (a DuckDB file or a URL)."""
    from omop_behrt.tasks import cohorts
    from omop_behrt.vocab import names as report
    from omop_behrt.tasks import labels as tasks
    from omop_behrt.adapters import omop
    from omop_behrt.adapters.omop_queries import EVENT_TABLES, _record
    from omop_behrt.db.cdm import OmopCdm
    from omop_behrt.vocab.concepts import ancestor_table_empty
    from omop_behrt.db.database import Database
    from omop_behrt.events import EventDir
    from omop_behrt.vectors.export import EmbeddingModelInfo, write_embeddings
    from omop_behrt.vocab.mapping import map_events
    omop.extract(source, events_dir, progress=False)
    cohorts.first_occurrence_cohort(source, 1, [1118084, 1124300, 1177480, 1115008])
    cohorts.min_visits_cohort(source, 2, 3)
    task = tasks.plp_task(source, 1, outcome_concepts=[192671])
    ev = EventDir.open(events_dir)
    for vocab in ("concept", "ancestor(level=2)", "caliber"):
        map_events(ev, vocab, cdm=source, progress=False)
    report.concept_names_by_id(source, [192671])
    report.concept_details(source, ["SNOMED/74474003", "RxNorm/1118084"])
    report.data_source(source)
    cdm = OmopCdm(Database.connect(source))
    ancestor_table_empty(cdm)
    spec = EVENT_TABLES["condition"]
    frag = {"table": cdm.qtable(spec.table), "row_id": cdm.col(spec.table, spec.row_id, "e"),
            "record": _record(cdm, spec)}
    cdm.db.query(render(load_sql("omop/duplicate_ids.sql"), frag))   # runs only on repeated ids otherwise
    index = task.labels.select(["subject_id", "index_date"]).slice(0, 50)
    index = index.append_column("cohort_definition_id", pa.array([1] * index.num_rows, pa.int64()))
    vectors = np.random.default_rng(0).standard_normal((index.num_rows, 8)).astype("float32")
    write_embeddings(embed_target, index, vectors, EmbeddingModelInfo("m" * 16, "bench", 8, "c" * 16),
                     ohdsi_analysis_id=990, **({"schema": "bench_out"} if "://" in embed_target else {}))


def fragments_of(name: str, sql: str, rec: Recorder, fragments: dict) -> dict:
    """The fragments a recorded statement was rendered with (the first recorded per template)."""
    return rec.fragments.get(name, fragments.get(name, {}))


def exercise_pg(url: str, schema: str, work: Path) -> None:
    """exercise() on the Synthea CDM loaded into PostgreSQL (cdm and results in ``schema``)."""
    from omop_behrt.tasks import cohorts
    from omop_behrt.tasks import labels as tasks
    from omop_behrt.adapters import omop
    from omop_behrt.events import EventDir
    from omop_behrt.vectors.export import EmbeddingModelInfo, write_embeddings
    from omop_behrt.vocab.names import concept_names_by_id
    from omop_behrt.vocab.mapping import map_events
    src = f"{url}"
    omop.extract(src, work / "pg_events", cdm_schema=schema, progress=False)
    cohorts.first_occurrence_cohort(src, 1, [1118084, 1124300, 1177480, 1115008, 40213154], cdm_schema=schema,
                                    results_schema=schema, descendants=False, allow_cdm_schema=True)
    cohorts.min_visits_cohort(src, 2, 2, cdm_schema=schema, results_schema=schema, allow_cdm_schema=True)
    task = tasks.plp_task(src, 2, outcome_concepts=[192671, 4112343, 40481087], cdm_schema=schema,
                          results_schema=schema, min_time_at_risk=0, descendants=False)
    from omop_behrt.db.cdm import OmopCdm
    from omop_behrt.db.database import Database
    cdm = OmopCdm(Database.connect(src), schema, schema)
    map_events(EventDir.open(work / "pg_events"), "concept", cdm=cdm, progress=False)
    concept_names_by_id(cdm, [40213154])
    index = task.labels.select(["subject_id", "index_date"]).slice(0, 20)
    index = index.append_column("cohort_definition_id", pa.array([2] * index.num_rows, pa.int64()))
    vectors = np.random.default_rng(0).standard_normal((index.num_rows, 8)).astype("float32")
    write_embeddings(src, index, vectors, EmbeddingModelInfo("m" * 16, "bench", 8, "c" * 16),
                     schema=schema + "_out", ohdsi_analysis_id=990)

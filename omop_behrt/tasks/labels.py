"""Prediction tasks (labels): PLP-style binary outcomes in the CDM, BEHRT's T1-T3 multi-hot tasks, person splits.

A *task* is rows (subject_id, index_date) with labels. Inputs for a row are only events strictly before its
index date (the tokenizer / extraction cut); outcomes are only events on or after index + time-at-risk start
(PLP) or at or after the cut (BEHRT), so no label reads what an input may see, and no input sees a label.

- :func:`plp_task`: target cohort entries + an outcome (concepts with descendants, or an outcome cohort) +
  a time-at-risk window; exclusions as in OHDSI PatientLevelPrediction (prior outcome, prior observation,
  minimum time at risk from observation_period). SQL: ``sql/tasks/plp_labels.sql``, run in the CDM.
- :func:`behrt_task`: BEHRT T1 (next visit), T2 (next 6 months), T3 (next 12 months) over the disease
  tokens of a vocabulary (e.g. ``CALIBER/``), a seeded random cut after visit j >= 3 per person,
  follow-up required for T2/T3, optionally first incidence only.
- :func:`split_persons`: seeded train / val / test by person, saved as Parquet; no person in two splits.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from omop_behrt.tasks.cohorts import INDEX_SCHEMA, CohortTable, occurrences_sql
from omop_behrt.db.database import Database, load_sql, render
from omop_behrt.events import write_json, write_table
from omop_behrt.lock import writing_folder
from omop_behrt.shareable import MIN_COUNT, count_text, shown_count

if TYPE_CHECKING:
    from omop_behrt.tasks.atlas import AtlasCohort

LABELS_SCHEMA = pa.schema([pa.field("subject_id", pa.int64()), pa.field("index_date", pa.timestamp("us")),
                           pa.field("label", pa.int8())])
HORIZON_DAYS = {"T1": None, "T2": 182, "T3": 365}     # BEHRT: next visit, next 6 months, next 12 months
SPLITS = ("train", "val", "test")



@dataclass
class Task:
    """Labels (subject_id, index_date, label) and how they were made: definition and attrition counts."""

    labels: pa.Table
    definition: dict = field(default_factory=dict)
    attrition: dict = field(default_factory=dict)

    @property
    def y(self) -> np.ndarray:
        return self.labels.column("label").to_numpy().astype(np.int8)

    @property
    def index(self) -> pa.Table:
        """The rows as an index table (cohort_definition_id 0) for embedding."""
        return pa.table({"cohort_definition_id": pa.array(np.zeros(self.labels.num_rows, np.int64)),
                         "subject_id": self.labels["subject_id"], "index_date": self.labels["index_date"]},
                        schema=INDEX_SCHEMA)

    def save(self, path: str | Path) -> Path:
        """``labels.parquet`` + ``task.json`` in a directory."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with writing_folder(path, "a task"):
            write_table(self.labels, path / "labels.parquet")
            write_json({"definition": self.definition, "attrition": self.attrition}, path / "task.json")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Task":
        path = Path(path)
        if not (path / "labels.parquet").exists():
            raise FileNotFoundError(f"{path} is not a task directory: labels.parquet is missing "
                                    f"(write one with `omop-behrt task plp`)")
        meta = json.loads((path / "task.json").read_text()) if (path / "task.json").exists() else {}
        labels = pq.read_table(path / "labels.parquet")
        for need in LABELS_SCHEMA.names:
            if need not in labels.column_names:
                raise ValueError(f"{path}/labels.parquet: column {need!r} is missing; columns: {labels.column_names}")
        return cls(labels.select(LABELS_SCHEMA.names).cast(LABELS_SCHEMA), meta.get("definition", {}),
                   meta.get("attrition", {}))


def _outcome_sql(cdm, concept_ids: Sequence[int] | None, outcome_cohort: int | None, descendants: bool,
                 results_schema: str | None, cohort_table: str) -> tuple[str, dict]:
    """One SELECT person_id, start_date for the outcome: concept occurrences (with descendants) or a cohort."""
    if outcome_cohort is not None:
        table, c = CohortTable(cdm.db, results_schema, cohort_table).resolve()
        return (f"SELECT CAST(c.{c['subject_id']} AS BIGINT) AS person_id, CAST(c.{c['cohort_start_date']} AS DATE)"
                f" AS start_date FROM {table} c WHERE c.{c['cohort_definition_id']} = :outcome_cohort",
                {"outcome_cohort": int(outcome_cohort)})
    if not concept_ids:
        raise ValueError("an outcome is needed: outcome concept ids (with descendants) or an outcome cohort id")
    wanted = "SELECT unnest(CAST(:concept_ids AS BIGINT[]))"
    if descendants:
        cdm.require("concept_ancestor")
        wanted += (f" UNION SELECT CAST({cdm.col('concept_ancestor', 'descendant_concept_id')} AS BIGINT) FROM "
                   f"{cdm.qtable('concept_ancestor')} WHERE CAST({cdm.col('concept_ancestor', 'ancestor_concept_id')}"
                   f" AS BIGINT) IN (SELECT unnest(CAST(:concept_ids AS BIGINT[])))")
    return occurrences_sql(cdm, None, wanted), {"concept_ids": [int(c) for c in concept_ids]}


def plp_task(source, target: "pa.Table | int | AtlasCohort", *, outcome_concepts: Sequence[int] | None = None,
             outcome_cohort: "int | AtlasCohort | None" = None, descendants: bool = True, tar_start: int = 1,
             tar_end: int = 365,
             min_prior_observation: int = 0, min_time_at_risk: int = 364, include_all_outcomes: bool = True,
             remove_prior_outcome: bool = True, prior_outcome_lookback: int = 99999,
             cdm_schema: str | None = None, vocab_schema: str | None = None, results_schema: str | None = None,
             cohort_table: str = "cohort") -> Task:
    """Binary labels for target entries: outcome in [index + tar_start, index + tar_end] days (PLP defaults).

    ``target``: an index table (subject_id, index_date), a cohort_definition_id in the results schema's
    cohort table, or an ATLAS definition (:func:`omop_behrt.tasks.atlas.from_atlas`), generated there first under its
    cohort id; ``outcome_cohort`` likewise. Entries failing an exclusion are dropped and counted in ``attrition``.
    """
    from omop_behrt.db.cdm import OmopCdm
    from omop_behrt.tasks.atlas import AtlasCohort, generate_cohort_set
    if tar_start < 0 or tar_end < tar_start:
        raise ValueError(f"time at risk must satisfy 0 <= tar_start <= tar_end (days after index); got "
                         f"[{tar_start}, {tar_end}]: an outcome before the index would overlap the inputs")
    roles = [(r, c) for r, c in (("target", target), ("outcome", outcome_cohort)) if isinstance(c, AtlasCohort)]
    db = Database.connect(source, read_only=not roles)
    definitions, ids = {}, {}
    if roles:
        gens = generate_cohort_set(db, [c for _, c in roles], cdm_schema=cdm_schema, vocab_schema=vocab_schema,
                                   results_schema=results_schema, cohort_table=cohort_table)
        for (role, c), g in zip(roles, gens):
            definitions[role] = {"name": c.name, "cohort_id": g.cohort_id, "sha256": c.digest(), "origin": c.origin}
            ids[role] = g.cohort_id
    target, outcome_cohort = ids.get("target", target), ids.get("outcome", outcome_cohort)
    cdm = OmopCdm(db, cdm_schema, vocab_schema)
    if isinstance(target, int):
        target_name = f"cohort {target}"
        target = CohortTable(cdm.db, results_schema, cohort_table).read(target)
    else:
        target_name = "index table"
    for need in ("subject_id", "index_date"):
        if need not in target.column_names:
            raise ValueError(f"target {target_name}: column {need!r} is missing; columns: {target.column_names}")
    outcomes, params = _outcome_sql(cdm, outcome_concepts, outcome_cohort, descendants, results_schema, cohort_table)
    op = "observation_period"
    cdm.require(op)
    sql = render(load_sql("tasks/plp_labels.sql"), {
        "outcomes": outcomes, "observation_period": cdm.qtable(op), "op_person_id": cdm.col(op, "person_id"),
        "op_start": cdm.col(op, "observation_period_start_date"), "op_end": cdm.col(op, "observation_period_end_date")})
    params.update(t_subject=target["subject_id"].cast(pa.int64()).to_pylist(),
                  t_date=target["index_date"].cast(pa.timestamp("us")).cast(pa.date32()).to_pylist(),
                  tar_start=int(tar_start), tar_end=int(tar_end), lookback=int(prior_outcome_lookback),
                  remove_prior=bool(remove_prior_outcome), min_prior=int(min_prior_observation),
                  min_tar=int(min_time_at_risk), include_all_outcomes=bool(include_all_outcomes))
    rows = cdm.db.query(sql, params)
    reasons = rows.column("excluded")
    counts = pc.value_counts(pc.drop_null(reasons)).to_pylist()
    kept = rows.filter(pc.is_null(reasons))
    labels = kept.select(LABELS_SCHEMA.names).cast(LABELS_SCHEMA)
    attrition = {"target entries": target.num_rows, **{f"excluded: {c['values']}": c["counts"] for c in counts},
                 "kept": labels.num_rows, "outcomes": int(pc.sum(labels["label"]).as_py() or 0)}
    definition = {"kind": "plp", "target": target_name, "outcome_concepts": list(outcome_concepts or []),
                  "outcome_cohort": outcome_cohort, "descendants": descendants, "tar_start": tar_start,
                  "tar_end": tar_end, "min_prior_observation": min_prior_observation,
                  "min_time_at_risk": min_time_at_risk, "include_all_outcomes": include_all_outcomes,
                  "remove_prior_outcome": remove_prior_outcome, "prior_outcome_lookback": prior_outcome_lookback,
                  **{f"{role}_atlas": d for role, d in definitions.items()}}
    return Task(labels, definition, attrition)


@dataclass
class MultiLabelTask:
    """BEHRT T1-T3: one row per person (subject_id, index_date = the cut), multi-hot Y over ``diseases``."""

    index: pa.Table
    Y: np.ndarray
    diseases: list[str]
    definition: dict = field(default_factory=dict)

    @property
    def labels(self) -> pa.Table:
        """The rows (subject_id, index_date), as :class:`Task` exposes them (for the shared preparation)."""
        return self.index

    def save(self, path: str | Path) -> Path:
        """``index.parquet`` + ``labels.npz`` (Y) + ``task.json`` (definition, diseases) in a directory."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with writing_folder(path, "a task"):
            write_table(self.index, path / "index.parquet")
            tmp = path / f".labels.{os.getpid()}.tmp.npz"
            np.savez_compressed(tmp, Y=self.Y)
            os.replace(tmp, path / "labels.npz")
            write_json({"definition": self.definition, "diseases": self.diseases}, path / "task.json")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MultiLabelTask":
        path = Path(path)
        if not (path / "labels.npz").exists():
            raise FileNotFoundError(f"{path} is not a BEHRT task directory: labels.npz is missing "
                                    f"(write one with `omop-behrt task behrt`)")
        meta = json.loads((path / "task.json").read_text())
        return cls(pq.read_table(path / "index.parquet"), np.load(path / "labels.npz")["Y"], meta["diseases"],
                   meta["definition"])


def behrt_task(tokens: pa.Table, task: str = "T1", *, disease_prefix: str = "CALIBER/",
               diseases: Sequence[str] | None = None, min_visits: int = 3, first_incidence: bool = False,
               seed: int = 0) -> MultiLabelTask:
    """BEHRT's T1/T2/T3 from a token table (subject_id, time, visit_id, token), vectorised in DuckDB.

    Visits are distinct visit start times per person in ``tokens`` (with a diagnosis-only vocabulary such as
    ``caliber``: the visits with a diagnosis, as BEHRT used). For each person a seeded random j >= ``min_visits``
    is drawn among the visits that can be cut there (T1: a next visit exists; T2/T3: the person's records go
    on for the horizon after the cut); the index is the start of visit j+1, inputs are events before it.
    Labels: disease tokens in visit j+1 (T1) or in [index, index + 182/365 days) (T2/T3); with
    ``first_incidence`` only diseases not seen before the index.
    """
    if task not in HORIZON_DAYS:
        raise ValueError(f"task must be one of {list(HORIZON_DAYS)}, got {task!r}")
    con = duckdb.connect()
    con.register("t", tokens.select(["subject_id", "time", "visit_id", "token"]))
    if diseases is None:
        diseases = sorted(r[0] for r in con.execute(
            "SELECT DISTINCT token FROM t WHERE starts_with(token, ?)", [disease_prefix]).fetchall())
    if not diseases:
        raise ValueError(f"no disease tokens: no token starts with {disease_prefix!r} (use a vocabulary such as "
                         f"caliber, or pass diseases=)")
    con.register("d", pa.table({"token": pa.array(list(diseases)), "k": pa.array(np.arange(len(diseases)))}))
    horizon = HORIZON_DAYS[task]
    con.execute("""CREATE TEMP TABLE vs AS
        SELECT subject_id, vstart, row_number() OVER (PARTITION BY subject_id ORDER BY vstart) AS k FROM (
          SELECT DISTINCT t.subject_id, min(t.time) OVER (PARTITION BY t.subject_id, t.visit_id) AS vstart
          FROM t WHERE t.time IS NOT NULL)""")
    follow = "TRUE" if horizon is None else \
        f"nxt.vstart + INTERVAL {int(horizon)} DAY <= (SELECT max(time) FROM t WHERE t.subject_id = v.subject_id)"
    cand = con.sql(f"""
        SELECT v.subject_id, v.k AS j, nxt.vstart AS index_time FROM vs v
        JOIN vs nxt ON nxt.subject_id = v.subject_id AND nxt.k = v.k + 1
        WHERE v.k >= {int(min_visits)} AND {follow}
        ORDER BY v.subject_id, v.k""").to_arrow_table()
    subj = cand["subject_id"].to_numpy()
    if len(subj) == 0:
        raise ValueError(f"{task}: no person has {min_visits}+ visits and the follow-up the task needs")
    starts = np.flatnonzero(np.r_[True, subj[1:] != subj[:-1]])
    sizes = np.diff(np.r_[starts, len(subj)])
    pick = starts + np.floor(np.random.default_rng(seed).random(len(starts)) * sizes).astype(np.int64)
    chosen = cand.take(pa.array(pick))
    con.register("c", pa.table({"row": np.arange(chosen.num_rows), "subject_id": chosen["subject_id"],
                                "index_time": chosen["index_time"]}))
    if horizon is None:
        window = ("t.time >= c.index_time AND t.visit_id IN (SELECT visit_id FROM t t2 WHERE t2.subject_id = "
                  "c.subject_id GROUP BY visit_id HAVING min(t2.time) = c.index_time)")
    else:
        window = f"t.time >= c.index_time AND t.time < c.index_time + INTERVAL {int(horizon)} DAY"
    pos = con.sql(f"SELECT DISTINCT c.row, d.k FROM c JOIN t USING (subject_id) JOIN d USING (token) "
                  f"WHERE {window}").fetchnumpy()
    Y = np.zeros((chosen.num_rows, len(diseases)), dtype=np.int8)
    Y[pos["row"], pos["k"]] = 1
    if first_incidence:
        seen = con.sql("SELECT DISTINCT c.row, d.k FROM c JOIN t USING (subject_id) JOIN d USING (token) "
                       "WHERE t.time < c.index_time").fetchnumpy()
        Y[seen["row"], seen["k"]] = 0
    con.close()
    index = pa.table({"subject_id": chosen["subject_id"], "index_date": chosen["index_time"].cast(pa.timestamp("us"))})
    definition = {"kind": "behrt", "task": task, "horizon_days": horizon, "min_visits": min_visits,
                  "first_incidence": first_incidence, "seed": seed, "disease_prefix": disease_prefix,
                  "persons": chosen.num_rows, "positives": int(Y.sum())}
    return MultiLabelTask(index, Y, list(diseases), definition)


def split_persons(subject_id: np.ndarray, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> np.ndarray:
    """'train' / 'val' / 'test' per row, by person: a seeded permutation of the distinct persons."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1; got {fractions}")
    persons = np.unique(np.asarray(subject_id, dtype=np.int64))
    order = np.random.default_rng(seed).permutation(len(persons))
    cuts = np.round(np.cumsum(fractions)[:2] * len(persons)).astype(int)
    which = np.empty(len(persons), dtype=object)
    which[order[:cuts[0]]], which[order[cuts[0]:cuts[1]]], which[order[cuts[1]:]] = SPLITS
    return which[np.searchsorted(persons, subject_id)].astype(str)


def save_split(path: str | Path, subject_id: np.ndarray, split: np.ndarray) -> Path:
    """One row per person: subject_id, split (Parquet)."""
    persons, first = np.unique(np.asarray(subject_id, np.int64), return_index=True)
    pq.write_table(pa.table({"subject_id": persons, "split": np.asarray(split)[first]}), path)
    return Path(path)


def load_split(path: str | Path, subject_id: np.ndarray) -> np.ndarray:
    """The saved split of each row's person; error naming the file when a person has none."""
    t = pq.read_table(path)
    persons, split = t["subject_id"].to_numpy(), np.asarray(t["split"].to_pylist())
    if len(np.unique(persons)) != len(persons):
        raise ValueError(f"{path}: a subject_id appears more than once; each person belongs to one split")
    order = np.argsort(persons)
    pos = np.searchsorted(persons[order], subject_id)
    ok = (pos < len(persons)) & (persons[order][np.minimum(pos, len(persons) - 1)] == subject_id)
    if not ok.all():
        raise ValueError(f"{path}: subject_id {int(np.asarray(subject_id)[~ok][0])} has no split")
    return split[order][pos]


class LeakageWarning(UserWarning):
    """The encoder was (or may have been) pretrained on events inside a task's outcome windows."""


def pretraining_overlap(metadata: dict, task: "Task | MultiLabelTask", *, min_count: int = MIN_COUNT) -> str | None:
    """A warning when the encoder was pretrained on events inside this task's outcome windows (None: no overlap).

    Exact when the pretraining event directory (``training_data.events_dir``) is still here: one DuckDB join
    counts the task entries whose person has pretraining events on or after the index date and inside
    [index + tar_start, index + tar_end]. Otherwise the model's censoring digest is compared with the task's
    index dates, then its last year of data with the task's first index year. Counts below ``min_count`` show
    as ``<N``; no person is named.
    """
    data = metadata.get("training_data") or {}
    d = task.definition
    tar_start, tar_end = (int(d.get("tar_start", 1)), int(d.get("tar_end", 365))) if d.get("kind") == "plp" \
        else (0, int(d.get("horizon_days") or 36_500))
    window = f"days {tar_start}-{tar_end} after index" if d.get("kind") == "plp" else "after the cut"
    fix = ("pretrain on events censored at the task's index dates (`omop-behrt extract --index-dates "
           "<task>/labels.parquet ...`, as the demo does)")
    ix = task.labels.select(["subject_id", "index_date"])
    events = Path(str(data.get("events_dir", ""))) / "events"
    files = sorted(events.glob("*.parquet")) if data.get("events_dir") and events.is_dir() else []
    if files:
        con = duckdb.connect()
        con.register("ix", ix)
        con.register("ev", ds.dataset([str(f) for f in files], format="parquet"))   # streamed, columns pushed down
        later, inside, n = con.execute(load_sql("tasks/pretraining_overlap.sql"),
                                       {"tar_start": tar_start, "tar_end": tar_end}).fetchone()
        con.close()
        if inside:
            shown = lambda k: count_text(shown_count(k, min_count))  # noqa: E731
            return (f"leakage: the model was pretrained on events inside the outcome window ({window}) of "
                    f"{shown(inside)} of {shown(n)} task entries ({shown(later)} "
                    f"have pretraining events on or after their index date), so its scores on this task are "
                    f"optimistic; {fix}")
        return None
    from omop_behrt.adapters.omop import index_dates_digest
    if data.get("censored_at") and data["censored_at"] == index_dates_digest(ix):
        return None
    first_index = pc.min(ix["index_date"]).as_py()
    last_year = data.get("last_year")
    if first_index is not None and last_year is not None and int(last_year) >= first_index.year:
        return (f"possible leakage: the model's pretraining data runs to {last_year} and was not censored at this "
                f"task's index dates (the first is in {first_index.year}); its pretraining events "
                f"({data.get('events_dir') or 'unknown'}) are not here to check exactly. If they hold these "
                f"persons' outcome windows ({window}), scores are optimistic; {fix}")
    return None

"""Benchmark suites: several binary tasks at one set of index dates, built from an event directory.

In the style of EHRSHOT: one index date per person (drawn at random inside the person's record, or at a visit),
one person split, and several outcomes read off the same event directory, so a suite runs on an OMOP extraction
and on a FHIR one alike (``omop-behrt cohort`` and ``task plp`` need a CDM; these builders do not). A task's
label is 1 when an outcome falls in [index + start, index + end] days; a row without one is kept only when the
person is followed to the window's end; ``new_onset`` drops rows whose person had the outcome before the index.

Outcomes (``kind``): ``code`` (events whose code is listed, starts with a listed prefix, or whose OMOP concept is
listed; optionally only in some domains), ``visit`` (a visit of the listed codes starts in the window),
``long_stay`` (such a visit lasting >= ``min_stay_days``), ``death`` (persons.death_date in the window).
Suites ship in ``omop_behrt/suites/*.yaml``; a user's YAML file has the same keys (:meth:`Suite.from_dict`).
The SQL is in ``sql/suite/``, run by DuckDB over the event directory's Parquet files.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from omop_behrt.tasks.cohorts import INDEX_SCHEMA
from omop_behrt.db.database import load_sql
from omop_behrt.events import EventDir, write_json, write_table
from omop_behrt.tasks.labels import LABELS_SCHEMA, Task, split_persons

KINDS = ("code", "visit", "long_stay", "death")
INDEX_KINDS = ("random", "event")
DAY_US = 86_400_000_000


@dataclass(frozen=True)
class SuiteTask:
    """One binary outcome of a suite: what counts as the outcome and its window (days after the index date)."""

    name: str
    kind: str = "code"
    window: tuple[int, int] = (1, 365)
    codes: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    concept_ids: tuple[int, ...] = ()
    domains: tuple[str, ...] = ()
    new_onset: bool = False
    min_stay_days: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        where = f"suite task {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        start, end = self.window
        if not 0 <= start <= end:
            raise ValueError(f"{where}: window must be [start, end] days with 0 <= start <= end; got {self.window}")
        if self.kind == "code" and not (self.codes or self.prefixes or self.concept_ids):
            raise ValueError(f"{where}: a code outcome needs codes, prefixes or concept_ids")
        if self.kind == "long_stay" and self.min_stay_days < 1:
            raise ValueError(f"{where}: a long_stay outcome needs min_stay_days >= 1")


@dataclass
class Suite:
    """A named set of tasks sharing index dates and a split (see the module docstring for the YAML keys)."""

    name: str
    tasks: list[SuiteTask]
    index: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    description: str = ""
    min_test_positives: int = 30
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict, where: str = "suite") -> "Suite":
        """From the YAML's dict; errors name the file (``where``) and the key."""
        known = {"name", "tasks", "index", "split", "description", "min_test_positives", "notes"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
        if not d.get("tasks"):
            raise ValueError(f"{where}: 'tasks' must list at least one task")
        index = {"kind": "random", "seed": 0, "min_history_days": 365, "min_followup_days": 365,
                 "domains": [], "codes": [], **(d.get("index") or {})}
        if index["kind"] not in INDEX_KINDS:
            raise ValueError(f"{where}: index.kind must be one of {', '.join(INDEX_KINDS)}; got {index['kind']!r}")
        split = {"fractions": [0.6, 0.2, 0.2], "seed": 0, **(d.get("split") or {})}
        tasks, names = [], set()
        task_keys = {f for f in SuiteTask.__dataclass_fields__}
        for i, t in enumerate(d["tasks"]):
            if not isinstance(t, dict) or "name" not in t:
                raise ValueError(f"{where}: tasks[{i}] must be a mapping with a 'name'")
            bad = set(t) - task_keys
            if bad:
                raise ValueError(f"{where}: tasks[{i}] ({t['name']}): unknown keys {sorted(bad)}; "
                                 f"expected some of {sorted(task_keys)}")
            if t["name"] in names:
                raise ValueError(f"{where}: two tasks are named {t['name']!r}")
            names.add(t["name"])
            t = {**t, **{k: tuple(t[k]) for k in ("window", "codes", "prefixes", "concept_ids", "domains")
                         if k in t}}
            tasks.append(SuiteTask(**t))
        return cls(name=str(d.get("name") or "suite"), tasks=tasks, index=index, split=split,
                   description=str(d.get("description") or ""),
                   min_test_positives=int(d.get("min_test_positives", 30)), notes=list(d.get("notes") or []))

    @classmethod
    def load(cls, name_or_path: str | Path) -> "Suite":
        """A shipped suite by name (``eunomia``, ``synthea_1k``, ...) or a YAML file."""
        import yaml
        p = Path(name_or_path)
        if p.suffix in (".yaml", ".yml", ".json") or p.is_file():
            if not p.exists():
                raise FileNotFoundError(f"suite file {p} does not exist")
            text, where = p.read_text(), str(p)
        else:
            shipped = resources.files("omop_behrt") / "suites" / f"{name_or_path}.yaml"
            if not shipped.is_file():
                raise ValueError(f"unknown suite {name_or_path!r}; shipped suites: {', '.join(suite_names())} "
                                 "(or give a YAML file)")
            text, where = shipped.read_text(), f"suite {name_or_path}"
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{where}: not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping with name, index, split and tasks")
        return cls.from_dict(d, where)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "index": self.index, "split": self.split,
                "min_test_positives": self.min_test_positives, "notes": self.notes,
                "tasks": [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(t).items()}
                          for t in self.tasks]}


def suite_names() -> list[str]:
    """The suites shipped with the package."""
    return sorted(p.name[:-5] for p in (resources.files("omop_behrt") / "suites").iterdir() if p.name.endswith(".yaml"))


@dataclass
class BuiltSuite:
    """A suite's index rows (one per person), the split of those rows, and each task's labelled rows."""

    suite: Suite
    index: pa.Table                      # INDEX_SCHEMA, sorted by subject
    split: np.ndarray                    # 'train' / 'val' / 'test' per index row
    tasks: dict[str, Task]
    rows: dict[str, np.ndarray]          # task -> its rows in ``index``
    attrition: dict = field(default_factory=dict)

    def task_split(self, name: str) -> np.ndarray:
        return self.split[self.rows[name]]

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """Rows and positives per task and split (aggregates; the report suppresses small ones)."""
        out = {}
        for name, task in self.tasks.items():
            y, s = task.y, self.task_split(name)
            out[name] = {k: {"rows": int((s == k).sum()), "positives": int(y[s == k].sum())}
                         for k in ("train", "val", "test")}
        return out

    def save(self, folder: str | Path) -> Path:
        """Index rows, split and labels (per person: the work directory's, never a shareable artefact)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_table(self.index.append_column("split", pa.array(self.split, pa.string())), folder / "index.parquet")
        for name, task in self.tasks.items():
            write_table(task.labels.append_column("row", pa.array(self.rows[name], pa.int64())),
                        folder / f"labels-{name}.parquet")
        write_json({"suite": self.suite.to_dict(), "attrition": self.attrition,
                    "tasks": {n: {"definition": t.definition, "attrition": t.attrition}
                              for n, t in self.tasks.items()}}, folder / "suite.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "BuiltSuite":
        folder = Path(folder)
        meta = json.loads((folder / "suite.json").read_text())
        suite = Suite.from_dict(meta["suite"], str(folder / "suite.json"))
        ix = pq.read_table(folder / "index.parquet")
        tasks, rows = {}, {}
        for t in suite.tasks:
            lab = pq.read_table(folder / f"labels-{t.name}.parquet")
            rows[t.name] = lab["row"].to_numpy()
            info = meta["tasks"][t.name]
            tasks[t.name] = Task(lab.drop(["row"]).cast(LABELS_SCHEMA), info["definition"], info["attrition"])
        return cls(suite, ix.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA),
                   ix["split"].to_numpy(zero_copy_only=False).astype(str), tasks, rows, meta["attrition"])


def _connect(events: EventDir) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("ev", ds.dataset([str(f) for f in events.event_files()], format="parquet"))
    con.register("p", events.persons())
    con.register("op", events.observation_periods())
    return con


def _spans(con) -> pa.Table:
    """spans.sql's rows, kept in the connection as ``sp``."""
    sp = con.sql(load_sql("suite/spans.sql")).to_arrow_table()
    con.register("sp", sp)
    return sp


def draw_index(con, spec: dict) -> tuple[pa.Table, dict]:
    """One index date per person (00:00 of a day; inputs are the events strictly before it) and the attrition.

    ``random``: a seeded uniform day between first event + ``min_history_days`` and the end of follow-up minus
    ``min_followup_days``. ``event``: the end of one day drawn uniformly among the days the person has an event
    (in ``domains`` / of ``codes`` when given; e.g. visits) inside the same bounds, so that day's events are inputs
    (EHRSHOT predicts at 23:59 of the visit day).
    """
    sp = _spans(con)
    hist, follow = int(spec["min_history_days"]), int(spec["min_followup_days"])
    rng = np.random.default_rng(int(spec["seed"]))
    n_persons = sp.num_rows
    has = sp.filter(pc.greater(sp["n_events"], 0))
    attrition = {"persons": n_persons, "persons without events": n_persons - has.num_rows}
    if spec["kind"] == "random":
        subject = has["subject_id"].to_numpy()
        first = has["first_event"].cast(pa.timestamp("us")).to_numpy().astype(np.int64)
        end = has["followup_end"].cast(pa.timestamp("us")).to_numpy().astype(np.int64)
        lo = (first // DAY_US + hist + (first % DAY_US > 0)) * DAY_US       # first whole day after the history
        hi = (end // DAY_US - follow) * DAY_US
        ok = hi >= lo
        attrition[f"record shorter than {hist} days of history + {follow} days of follow-up"] = int((~ok).sum())
        days = (hi[ok] - lo[ok]) // DAY_US + 1
        draw = lo[ok] + (rng.random(int(ok.sum())) * days).astype(np.int64) * DAY_US
        subject = subject[ok]
    else:
        cand = con.sql(load_sql("suite/event_days.sql"), params={
            "domains": [str(c) for c in spec.get("domains") or []], "codes": [str(c) for c in spec.get("codes") or []],
            "min_history_days": hist, "min_followup_days": follow}).to_arrow_table()
        s = cand["subject_id"].to_numpy()
        t = cand["index_date"].cast(pa.timestamp("us")).to_numpy().astype(np.int64)
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, len(s)])
        pick = starts + (rng.random(len(starts)) * sizes).astype(np.int64)
        subject, draw = s[pick], t[pick]
        attrition["persons without such an event inside the history / follow-up bounds"] = has.num_rows - len(subject)
    attrition["index rows"] = int(len(subject))
    index = pa.table({"cohort_definition_id": pa.array(np.zeros(len(subject), np.int64)),
                      "subject_id": pa.array(subject, pa.int64()),
                      "index_date": pa.array(draw.astype("datetime64[us]"), pa.timestamp("us"))}, schema=INDEX_SCHEMA)
    return index, attrition


def task_labels(con, index: pa.Table, task: SuiteTask, suite_name: str = "suite") -> tuple[Task, np.ndarray]:
    """A task's labels at the index rows (``sp`` must be registered); returns the Task and its rows in ``index``."""
    if task.kind == "death":
        o = con.sql(load_sql("suite/deaths.sql")).to_arrow_table()
    else:
        visit = task.kind in ("visit", "long_stay")
        o = con.sql(load_sql("suite/outcomes.sql"), params={
            "codes": list(task.codes), "prefixes": list(task.prefixes),
            "concept_ids": [int(c) for c in task.concept_ids],
            "domains": ["visit"] if visit else list(task.domains),
            "all_codes": visit and not (task.codes or task.prefixes or task.concept_ids),
            "min_stay_days": int(task.min_stay_days)}).to_arrow_table()
    con.register("o", o)
    con.register("ix", index.select(["subject_id", "index_date"]))
    start, end = task.window
    out = con.sql(load_sql("suite/labels.sql"), params={"start_days": int(start), "end_days": int(end),
                                                        "new_onset": bool(task.new_onset)}).to_arrow_table()
    con.unregister("o")
    con.unregister("ix")
    keep = pc.is_null(out["excluded"]).to_numpy(zero_copy_only=False)
    reasons = {r["values"]: int(r["counts"]) for r in pc.value_counts(out["excluded"].drop_null()).to_pylist()}
    rows = np.flatnonzero(keep)
    labels = out.select(["subject_id", "index_date", "label"]).take(pa.array(rows)).cast(LABELS_SCHEMA)
    definition = {"kind": "plp", "source": "suite", "suite": suite_name, "task": task.name, "outcome": task.kind,
                  "tar_start": int(start), "tar_end": int(end), "new_onset": task.new_onset,
                  "description": task.description}
    attrition = {"index rows": int(index.num_rows), **reasons, "rows": int(len(rows)),
                 "positives": int(labels["label"].to_numpy().sum())}
    return Task(labels, definition, attrition), rows


def build(events: str | Path | EventDir, suite: "Suite | str | Path") -> BuiltSuite:
    """Index dates, split and every task's labels of ``suite`` over an event directory."""
    ev = events if isinstance(events, EventDir) else EventDir.open(events)
    suite = suite if isinstance(suite, Suite) else Suite.load(suite)
    con = _connect(ev)
    try:
        index, attrition = draw_index(con, suite.index)
        if index.num_rows == 0:
            raise ValueError(f"suite {suite.name}: no person of {ev.path} has a record long enough for an index "
                             f"date ({attrition})")
        fr = suite.split["fractions"]
        split = split_persons(index["subject_id"].to_numpy(), tuple(float(f) for f in fr), int(suite.split["seed"]))
        tasks, rows = {}, {}
        for t in suite.tasks:
            tasks[t.name], rows[t.name] = task_labels(con, index, t, suite.name)
    finally:
        con.close()
    return BuiltSuite(suite, index, split, tasks, rows, attrition)


def task_problems(built: BuiltSuite) -> dict[str, str]:
    """Tasks a comparison cannot score (a split without both classes) or that miss the suite's positives goal."""
    out = {}
    for name, c in built.counts().items():
        for s in ("train", "test"):
            if c[s]["positives"] == 0 or c[s]["positives"] == c[s]["rows"]:
                out[name] = f"the {s} split has {c[s]['positives']} positives in {c[s]['rows']} rows: not scored"
                break
        else:
            if c["test"]["positives"] < built.suite.min_test_positives:
                out[name] = (f"{c['test']['positives']} positives in test (< {built.suite.min_test_positives}): "
                             "wide confidence intervals")
    return out


def censor(events: EventDir, index: pa.Table, out: str | Path) -> EventDir:
    """An event directory with only the events strictly before each indexed person's index date (what pretraining
    for a benchmark may see; persons without an index row keep their record); persons and observation periods
    copied, the cut recorded in the manifest."""
    from omop_behrt.adapters.omop import index_dates_digest
    out = Path(out)
    (out / "events").mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.register("ev", events.events())
        con.register("ix", index.select(["subject_id", "index_date"]))
        n_in = con.execute("SELECT count(*) FROM ev").fetchone()[0]
        target = str(out / "events" / "part-0.parquet").replace("'", "''")
        con.execute(f"""COPY (SELECT ev.* FROM ev LEFT JOIN ix ON ev.subject_id = ix.subject_id
                              WHERE ix.subject_id IS NULL OR ev.time IS NULL OR ev.time < ix.index_date
                              ORDER BY ev.subject_id, ev.time)
                        TO '{target}' (FORMAT parquet)""")
        n_out = con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]
    finally:
        con.close()
    persons = events.persons()
    write_table(persons, out / "persons.parquet")
    write_table(events.observation_periods(), out / "observation_periods.parquet")
    manifest = {**{k: v for k, v in events.manifest.items() if k not in ("parts", "counts")},
                "censored_at": index_dates_digest(index.select(["subject_id", "index_date"])),
                "censored_from": events.manifest.get("source", str(events.path.name)),
                "counts": {"events_in": int(n_in), "events_out": int(n_out),
                           "on_or_after_index": int(n_in - n_out)}}
    write_json(manifest, out / "manifest.json")
    return EventDir.open(out)


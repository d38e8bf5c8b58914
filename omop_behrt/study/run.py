"""A study in one command: a spec file (YAML or JSON) -> cohorts, task, events, model, embeddings, evaluation, report.

:func:`run_study` runs the library's stages on a :class:`~omop_behrt.study.spec.StudySpec` (what an OHDSI study
team decides, read and checked in :mod:`omop_behrt.study.spec`) in a work directory. Each stage records a
fingerprint of the spec part and the inputs it depends on (study.json in the work directory); a re-run skips a
stage whose fingerprint matches and redoes it, saying why, when it does not, so a changed spec redoes from the
first stage it changes. The demo is one such spec, shipped with the package
(omop_behrt/studies/eunomia_gi_bleed.yaml). The spec's names are importable from here too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omop_behrt.study.spec import (DEMO_SPEC, STUDIES, Cohort, Evaluation, Model, OhdsiTables, Outputs, Pretrain,
                                   Source,
                         SpecError, Split, StudySpec, TimeAtRisk, Vocabulary, _plain, load_spec)

__all__ = ["DEMO_SPEC", "STAGES_ALL", "STATE_FILE", "STUDIES", "Cohort", "Evaluation", "Model", "OhdsiTables",
           "Outputs", "Pretrain", "Source", "SpecError", "Split", "Stages", "StudyRun", "StudySpec", "TimeAtRisk",
           "Vocabulary", "digest", "load_spec", "run_study", "table_digest"]

STATE_FILE = "study.json"
#: the stages a run records, in order (``embeddings`` only with outputs.ohdsi)
STAGES_ALL = ("cohorts", "task", "extract", "coverage", "model", "embeddings", "evaluate", "report")


# -- fingerprints and the stage record -------------------------------------------------------------
def digest(obj: Any) -> str:
    """sha256 (16 hex digits) of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def table_digest(table) -> str:
    """sha256 (16 hex digits) over an Arrow table's columns in order (timestamps as µs integers)."""
    import numpy as np
    import pyarrow as pa
    h = hashlib.sha256()
    for name in table.column_names:
        col = table[name]
        h.update(name.encode() + b"\0")
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            col = col.cast(pa.timestamp("us")).cast(pa.int64())
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            h.update("\0".join(map(str, col.to_pylist())).encode())
        else:
            h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
    return h.hexdigest()[:16]


class Stages:
    """The work directory's record (study.json): per stage its inputs and output, written atomically."""

    def __init__(self, work: Path, resume: bool):
        from omop_behrt.events import write_json
        self.file, self.resume, self._write = work / STATE_FILE, resume, write_json
        self.record: dict = json.loads(self.file.read_text()) if self.file.exists() else {}
        self.record.setdefault("stages", {})
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def why(self, name: str, inputs: dict, outputs: tuple[Path, ...] = ()) -> str | None:
        """None when the stage is up to date; else why it (re)runs ('' on a first run)."""
        old = self.record["stages"].get(name)
        if old is None:
            return ""
        if not self.resume:
            return "--no-resume"
        if old["inputs"] != _plain(inputs):
            new = _plain(inputs)
            changed = [k for k in sorted(set(old["inputs"]) | set(new)) if old["inputs"].get(k) != new.get(k)]
            return "changed: " + ", ".join(changed)
        missing = [p for p in outputs if not Path(p).exists()]
        return f"{missing[0]} is missing" if missing else None

    def output(self, name: str) -> Any:
        return self.record["stages"][name]["output"]

    def start(self, name: str) -> None:
        """Forget a stage about to run, so an interrupted run redoes it."""
        self.record["stages"].pop(name, None)
        self._write(self.record, self.file)

    def done(self, name: str, inputs: dict, output: Any, seconds: float) -> None:
        self.record["stages"][name] = {"inputs": _plain(inputs), "output": _plain(output),
                                       "seconds": round(seconds, 2), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._write(self.record, self.file)
        self.ran.append(name)


@dataclass
class StudyRun:
    """What a run did: the work directory, the stages run and skipped, counts, the report."""
    work_dir: Path
    ran: list[str]
    skipped: list[str]
    cohorts: dict
    attrition: dict
    model_id: str
    report: Path | None
    seconds: float
    results: dict | None = None


# -- running a study -------------------------------------------------------------------------------
def run_study(spec: StudySpec | str | Path, work_dir: str | Path | None = None, *, resume: bool = True,
              progress: bool = True, n_jobs: int | None = None, what: str = "study") -> StudyRun:
    """Run every stage of ``spec`` in ``work_dir`` (default: the spec's), skipping those already done.

    Prints each stage as ``[  t s] [k/7] name: ...`` (and ``skipped``/``redone`` with the reason on a
    re-run), the coverage, attrition and results tables, then ``<what> finished in`` and the report's path.
    ``n_jobs``: worker processes for the fine-tunes (default evaluation.jobs, else one per core, at most 2).
    """
    from omop_behrt.vectors.export import exclusive_lock
    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    work = Path(work_dir) if work_dir is not None else spec.work_dir()
    work.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(work / ".study.lock", timeout=0, busy=f"work directory {work} is in use by another "
                        f"study run; wait for it or give another --work-dir"):
        return _Run(spec, work.resolve(), Stages(work, resume), progress, n_jobs, what).all()


class _Run:
    """One run of a spec: the stages in order, each skipped or (re)done by the record in study.json."""

    def __init__(self, spec: StudySpec, work: Path, stages: Stages, progress: bool, n_jobs: int | None, what: str):
        self.spec, self.work, self.stages, self.progress, self.what = spec, work, stages, progress, what
        self.n_jobs = n_jobs or spec.evaluation.jobs or max(1, min(2, os.cpu_count() or 1))
        self.t0 = time.perf_counter()
        self.src = spec.source
        self.cdm = self._cdm()
        #: where cohorts are written and read back: the CDM itself, or for a folder of exports one in-memory
        #: database kept open for the whole run (a second connection would not see what the first wrote)
        self.cohort_db = self._cdm_session()
        self.prep = None

    def say(self, k: int, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f} s] [{k}/7] {text}", flush=True)

    def stage(self, name: str, inputs: dict, outputs: tuple = (), intact=None) -> bool:
        """Whether ``name`` must run now (printing why on a re-run, or that it is skipped).

        ``intact``: called when the record says the stage is done; a reason when its output is gone or changed.
        """
        why = self.stages.why(name, inputs, outputs)
        if why is None and intact is not None:
            why = intact()
        if why is None:
            print(f"        {name}: unchanged since the last run, skipped")
            self.stages.skipped.append(name)
            return False
        if why:
            print(f"        {name}: redone ({why})")
        self.stages.start(name)
        return True

    def _cdm(self) -> str:
        """The CDM to read (``eunomia``: a private copy in the work directory, made once)."""
        cdm = self.src.cdm
        if cdm == "eunomia":
            from omop_behrt.study.demo import eunomia_path
            copy = self.work / "eunomia.duckdb"
            if not copy.exists():
                part = copy.with_name(f".{copy.name}.{os.getpid()}.part")
                shutil.copyfile(eunomia_path(), part)
                os.replace(part, copy)
            return str(copy)
        if "://" in cdm:
            return cdm
        path = self.spec.path(cdm)
        if not path.exists():
            raise SpecError(f"{self.spec.origin}: source.cdm: {path} not found (a DuckDB file, a folder of CDM "
                            f"exports, a SQLAlchemy URL or eunomia)")
        return str(path)

    def _cdm_session(self):
        from omop_behrt.db.database import Database
        return Database.connect(self.cdm) if "://" not in self.cdm and Path(self.cdm).is_dir() else self.cdm

    def source_id(self) -> dict:
        from omop_behrt.db.database import _redact
        s = self.src
        return {"cdm": _redact(self.cdm), "cdm_schema": s.cdm_schema, "vocab_schema": s.vocab_schema,
                "results_schema": s.results_schema, "cohort_table": s.cohort_table}

    def all(self) -> StudyRun:
        cohorts, task, split = self.task()
        events = self.extract(task)
        self.coverage(events)
        model = self.model(events)
        self.embeddings(model, task, split, cohorts)
        results = self.evaluate(model, task, split)
        report = self.report(model, results)
        seconds = time.perf_counter() - self.t0
        print(f"{self.what} finished in {seconds:.1f} s")
        if report is not None:
            print(f"report: {report.resolve()}")
        return StudyRun(self.work, self.stages.ran, self.stages.skipped, cohorts, task.attrition,
                        self.stages.output("model")["model_id"], report, seconds, results)

    # -- [1/7] cohorts and task
    def _cohort_words(self, role: str) -> str:
        """A cohort in words: its name, id and how it is made."""
        c: Cohort = getattr(self.spec, role)
        how = (f"ATLAS {Path(c.atlas).name}" if c.atlas else "existing cohort" if not c.concepts else
               "first of " * (role == "target") + ", ".join(map(str, c.concepts)) + " + descendants" * c.descendants)
        ident = f"cohort {c.cohort_id}" if c.cohort_id is not None and not (role == "outcome" and c.concepts) else ""
        parts = "; ".join(x for x in (ident, how) if x)
        return f"{c.name} ({parts})" if c.name else parts

    def _cohort_inputs(self, role: str) -> dict:
        c: Cohort = getattr(self.spec, role)
        part = self.spec.part(role)
        if c.atlas:
            part["atlas"] = hashlib.sha256(self.spec.path(c.atlas).read_bytes()).hexdigest()[:16]
        return part

    def _generate(self, role: str) -> dict | None:
        """Write ``role``'s cohort (ATLAS or concepts) into the cohort table; read it back; its count and digest."""
        from omop_behrt.tasks import cohorts
        from omop_behrt.vectors.embed_run import index_hash
        c: Cohort = getattr(self.spec, role)
        if role == "outcome" and c.concepts:
            return None                                   # outcome concepts: plp_task finds them itself
        s = self.src
        where = dict(cdm_schema=s.cdm_schema, results_schema=s.results_schema, cohort_table=s.cohort_table,
                     allow_cdm_schema=s.allow_cdm_schema)
        name = c.name
        if c.atlas:
            from omop_behrt.tasks.atlas import attrition_table, from_atlas, generate_cohort_set
            atlas = from_atlas(self.spec.path(c.atlas), cohort_id=c.cohort_id, name=c.name)
            gen = generate_cohort_set(self.cohort_db, [atlas], cohort_ids=[c.cohort_id], vocab_schema=s.vocab_schema,
                                      **where)
            print("        " + attrition_table(gen).replace("\n", "\n        "))
            name = name or atlas.name
        elif c.concepts:
            cohorts.first_occurrence_cohort(self.cohort_db, c.cohort_id, c.concepts, descendants=c.descendants,
                                            domains=c.domains, vocab_schema=s.vocab_schema, **where)
        rows = cohorts.CohortTable(self.cohort_db, s.results_schema, s.cohort_table).read(c.cohort_id)
        return {"cohort_id": c.cohort_id, "name": name, "entries": rows.num_rows,
                "persons": len(set(rows["subject_id"].to_pylist())), "digest": index_hash(rows)}

    def _cohorts_changed(self) -> str | None:
        """Why the cohorts recorded as written need writing again (rows deleted or changed since), else None."""
        from omop_behrt.tasks.cohorts import CohortTable
        from omop_behrt.db.database import SourceError
        from omop_behrt.vectors.embed_run import index_hash
        for role, c in self.stages.output("cohorts").items():
            if c is None:
                continue
            try:
                rows = CohortTable(self.cohort_db, self.src.results_schema, self.src.cohort_table).read(c["cohort_id"])
            except SourceError as e:
                return str(e)
            if index_hash(rows) != c["digest"]:
                return f"the rows of {role} cohort {c['cohort_id']} changed since the last run"
        return None

    def task(self):
        """Cohorts generated (or checked) in the CDM, then the PLP labels and the person split."""
        from omop_behrt.tasks.labels import Task, load_split, plp_task, save_split, split_persons
        spec, tar = self.spec, self.spec.time_at_risk
        self.say(1, f"task: {self._cohort_words('target')} -> {self._cohort_words('outcome')} in days "
                    f"{tar.tar_start}-{tar.tar_end}")
        inputs = {"source": self.source_id(), "target": self._cohort_inputs("target"),
                  "outcome": self._cohort_inputs("outcome")}
        if self.stage("cohorts", inputs, intact=self._cohorts_changed):
            t = time.perf_counter()
            found = {role: self._generate(role) for role in ("target", "outcome")}
            self.stages.done("cohorts", inputs, found, time.perf_counter() - t)
        found = self.stages.output("cohorts")
        for role, c in found.items():
            if c is not None:
                print(f"        {role} cohort {c['cohort_id']}: {c['entries']:,} entries, {c['persons']:,} persons")
        task_dir = self.work / "task"
        outcome = {"concepts": spec.outcome.concepts, "descendants": spec.outcome.descendants} \
            if spec.outcome.concepts else None                 # an outcome cohort: its rows are in ``cohorts``
        inputs = {"cohorts": found, "time_at_risk": spec.part("time_at_risk"), "split": spec.part("split"),
                  "outcome": outcome}
        if self.stage("task", inputs, (task_dir / "labels.parquet", task_dir / "split.parquet")):
            t = time.perf_counter()
            s, out = self.src, spec.outcome
            task = plp_task(self.cohort_db, spec.target.cohort_id,
                            outcome_concepts=out.concepts if out.concepts else None,
                            outcome_cohort=None if out.concepts else out.cohort_id, descendants=out.descendants,
                            cdm_schema=s.cdm_schema, vocab_schema=s.vocab_schema, results_schema=s.results_schema,
                            cohort_table=s.cohort_table, **dataclasses.asdict(tar))
            subjects = task.labels["subject_id"].to_numpy()
            split = split_persons(subjects, tuple(spec.split.fractions), seed=spec.split.seed)
            task.save(task_dir)
            save_split(task_dir / "split.parquet", subjects, split)
            import pyarrow as pa
            self.stages.done("task", inputs, {
                "index_dates": table_digest(task.labels.select(["subject_id", "index_date"])),
                "labels": table_digest(task.labels), "split": table_digest(pa.table({"split": split})),
                "attrition": task.attrition}, time.perf_counter() - t)
        else:
            task = Task.load(task_dir)
            split = load_split(task_dir / "split.parquet", task.labels["subject_id"].to_numpy())
        for k, v in task.attrition.items():
            print(f"        {k:<50} {v:>6,}")
        self.task_rows = task
        return found, task, split

    # -- [2/7] extract, [3/7] vocabulary
    def extract(self, task) -> Path:
        """The CDM's events censored at the task's index dates, inside the SQL (pretraining never sees an outcome)."""
        from omop_behrt.adapters import omop
        from omop_behrt.behrt.checkpoint import events_fingerprint
        out = self.work / "events"
        self.say(2, f"extract: {self.cdm} -> {out}, censored at each person's index date inside the SQL "
                    f"(pretraining never sees an outcome)")
        inputs = {"source": self.source_id(), "index_dates": self.stages.output("task")["index_dates"]}
        if self.stage("extract", inputs, (out / "manifest.json",)):
            t = time.perf_counter()
            opts = omop.ExtractOptions(index_dates=task.labels.select(["subject_id", "index_date"]))
            kw = dict(cdm_schema=self.src.cdm_schema, vocab_schema=self.src.vocab_schema, options=opts,
                      progress=self.progress)
            try:            # an interrupted extraction of the same inputs continues; another one starts again
                summary = omop.extract(self.cdm, out, resume=(out / "manifest.json").exists(), **kw)
            except ValueError as e:
                if not str(e).startswith("--resume:"):
                    raise
                shutil.rmtree(out, ignore_errors=True)
                summary = omop.extract(self.cdm, out, **kw)
            print(summary.table())
            self.stages.done("extract", inputs, {"events": events_fingerprint(out)}, time.perf_counter() - t)
        return out

    def coverage(self, events: Path) -> None:
        from omop_behrt.vocab.mapping import map_events
        vocabs = self.spec.vocabulary.coverage or [self.spec.vocabulary.tokens]
        self.say(3, f"vocabulary: {', '.join(vocabs)} coverage (the model reads {self.spec.vocabulary.tokens} "
                    f"tokens)")
        folder = self.work / "coverage"
        files = tuple(folder / f"{digest(v)}.txt" for v in vocabs)
        inputs = {"events": self.stages.output("extract"), "coverage": vocabs}
        if self.stage("coverage", inputs, files):
            t = time.perf_counter()
            folder.mkdir(exist_ok=True)
            for v, f in zip(vocabs, files):
                report = map_events(events, v, cdm=self.cdm, progress=False, sort=False).report
                report.write_json(f.with_suffix(".json"))
                f.write_text(f"{v}\n{report.table()}\n")
            self.stages.done("coverage", inputs, {"vocabularies": vocabs}, time.perf_counter() - t)
            for f in files:
                print(f.read_text().split("\n", 1)[1], end="")

    # -- [4/7] model
    def model(self, events: Path) -> Path:
        """Pretrain on the censored events, or check the spec's model directory."""
        from omop_behrt.behrt.model import model_id
        m, spec = self.spec.model, self.spec
        if m.directory is not None:
            out = spec.path(m.directory)
            self.say(4, f"pretrain: none, the model in {out} is used")
            inputs = {"directory": str(out.resolve()), "model_id": model_id(out)}
            meta = json.loads((out / "metadata.json").read_text()) if (out / "metadata.json").exists() else {}
            if meta.get("vocab", spec.vocabulary.tokens) != spec.vocabulary.tokens:
                raise SpecError(f"{spec.origin}: vocabulary.tokens: {spec.vocabulary.tokens!r}, but the model in {out} "
                                f"reads {meta['vocab']!r} tokens; name its vocabulary")
            if self.stage("model", inputs):
                self.stages.done("model", inputs, {"model_id": inputs["model_id"], "dir": str(out)}, 0.0)
            return out
        p, out = m.pretrain, self.work / "model"
        self.say(4, f"pretrain: {p.config} BEHRT, {p.epochs} epochs, masked LM -> {out}")
        inputs = {"events": self.stages.output("extract"), "tokens": spec.vocabulary.tokens,
                  "pretrain": spec.part("model")["pretrain"]}
        if self.stage("model", inputs, (out / "model.safetensors",)):
            t = time.perf_counter()
            from omop_behrt.behrt.checkpoint import ResumeError, default_work_dir
            from omop_behrt.behrt.pretrain import pretrain
            kw = dict(epochs=p.epochs, max_steps=p.max_steps, seed=p.seed, device=p.device, threads=p.threads,
                      min_count=p.min_count, progress=self.progress)
            config = p.config if p.config in ("tiny", "behrt") else str(spec.path(p.config))
            try:            # an interrupted pretraining of the same inputs continues from its checkpoint
                res = pretrain(events, spec.vocabulary.tokens, out, config, resume=(
                    default_work_dir(out) / "checkpoint.safetensors").exists(), **kw)
            except ResumeError:
                res = pretrain(events, spec.vocabulary.tokens, out, config, **kw)
            print(f"        validation masked-token accuracy {res.get('val_acc', float('nan')):.3f}, "
                  f"top-10 {res.get('val_top10', float('nan')):.3f}")
            self.stages.done("model", inputs, {"model_id": model_id(out), "dir": str(out)}, time.perf_counter() - t)
        return out

    # -- [5/7] embed (the task's rows, and the OHDSI tables)
    def _prepared(self, model: Path, task, text: bool = True):
        """The comparison's prepared rows, once per run; with the text vectors only when ``text`` and the methods
        need them (the report reads the text run's figures from the results: it never re-embeds)."""
        from omop_behrt.evaluation import comparison
        e = self.spec.evaluation
        wants_text = text and any(m in comparison.TEXT_METHODS for m in e.methods)
        if self.prep is None or (wants_text and self.prep.text is None):
            text_model = None
            if wants_text:                                     # a directory near the spec, or a name
                local = self.spec.path(e.text_model)
                text_model = str(local) if local.exists() else e.text_model
            self.prep = comparison.prepare(model, self.cdm, task, cdm_schema=self.src.cdm_schema,
                                           vocab_schema=self.src.vocab_schema, progress=self.progress,
                                           text_model=text_model, text_notes=e.text_notes)
        return self.prep

    def _eval_inputs(self) -> dict:
        e = self.spec.part("evaluation")
        for runtime in ("jobs", "min_count"):          # same numbers either way / only what the report shows
            e.pop(runtime)
        return {"source": self.source_id(), "model": self.stages.output("model")["model_id"],
                "labels": self.stages.output("task")["labels"], "split": self.stages.output("task")["split"],
                "evaluation": e}

    def embeddings(self, model: Path, task, split, found: dict) -> None:
        """Each person's sequence before the index date; with outputs.ohdsi, their vectors into the OHDSI tables."""
        o = self.spec.outputs.ohdsi
        target = None if o is None else (self.cdm if o.target == "cdm" else
                                         o.target if "://" in o.target else str(self.spec.path(o.target)))
        self.say(5, "embed: each person's sequence before the index date" + (
            f"; vectors to {target} ({o.schema}.{o.table}, cohort_attribute, analysis {o.analysis_id})" if o else ""))
        if o is None:
            return
        from omop_behrt.db.database import _redact
        inputs = {"model": self.stages.output("model")["model_id"], "rows": self.stages.output("task")["index_dates"],
                  "cohort_id": self.spec.target.cohort_id, "ohdsi": self.spec.part("outputs")["ohdsi"],
                  "target": _redact(target)}
        if not self.stage("embeddings", inputs):
            return
        t = time.perf_counter()
        w = self._write_embeddings(model, self._prepared(model, task), target, o)
        print(f"        wrote {w.rows:,} rows ({w.vector_type}) to {w.target}; {w.ohdsi_rows:,} cohort_attribute rows")
        self.stages.done("embeddings", inputs, {"rows": w.rows, "ohdsi_rows": w.ohdsi_rows}, time.perf_counter() - t)

    def _write_embeddings(self, model: Path, prep, target: str, o: OhdsiTables):
        """The task's rows (the study population) under the target cohort's id, as `omop-behrt embed` writes them."""
        import numpy as np
        import pyarrow as pa

        from omop_behrt.vectors import export
        from omop_behrt.vectors.embed import embed_sequences, model_checksum
        rows = prep.task.labels
        keep = np.asarray(prep.seqs.lengths) > 1                       # [CLS] alone: no history before index
        vectors = embed_sequences(prep.model, prep.seqs, pooling=o.pooling)
        index = pa.table({"cohort_definition_id": pa.array(np.full(rows.num_rows, self.spec.target.cohort_id),
                                                             pa.int64()),
                          "subject_id": rows["subject_id"], "index_date": rows["index_date"]})
        info = export.EmbeddingModelInfo.of_model_dir(model, model_checksum(model), vectors.shape[1])
        prov = {"study": self.spec.name, "spec": self.spec.origin, "pooling": o.pooling, "rows": rows.num_rows,
                "exported": int(keep.sum()), "cohort_source": f"study {self.spec.name}: the task's rows of "
                f"target cohort {self.spec.target.cohort_id}", "index_rule": "events strictly before the index date"}
        return export.write_embeddings(target, index.filter(pa.array(keep)), vectors[keep], info, schema=o.schema,
                                       table=o.table, ohdsi_analysis_id=o.analysis_id, provenance=prov,
                                       allow_cdm_schema=self.src.allow_cdm_schema)

    # -- [6/7] heads and baselines, [7/7] report
    def evaluate(self, model: Path, task, split) -> dict:
        from omop_behrt.evaluation import comparison
        from omop_behrt.cli.evaluate import results_table
        e, file = self.spec.evaluation, self.work / "evaluation.json"
        self.say(6, f"heads and baselines (same split){', few-shot curves' if e.few_shot else ''}; fine-tuning in "
                    f"{self.n_jobs} process{'es' if self.n_jobs > 1 else ''}")
        inputs = self._eval_inputs()
        if self.stage("evaluate", inputs, (file,)):
            t = time.perf_counter()
            results = comparison.run(self._prepared(model, task), split, methods=e.methods,
                                     few_shot_fractions=e.few_shot or None,
                                     finetune={"epochs": e.epochs, "patience": e.patience, "head": e.head},
                                     pooling=e.pooling, n_boot=e.bootstrap, seed=e.seed, progress=self.progress,
                                     n_jobs=self.n_jobs)
            part = file.with_name(f".{file.name}.{os.getpid()}.tmp")     # in method order (not sorted), atomic
            part.write_text(json.dumps(results, default=float))        # per-person test predictions: on site
            os.replace(part, file)
            self.stages.done("evaluate", inputs, {"results": hashlib.sha256(file.read_bytes()).hexdigest()[:16]},
                             time.perf_counter() - t)
        results = json.loads(file.read_text())
        print(results_table(results, e.min_count))
        return results

    def report(self, model: Path, results: dict) -> Path | None:
        from omop_behrt.evaluation.report import write_report
        o, spec = self.spec.outputs, self.spec
        out = spec.path(o.report) if o.report else self.work / "report"
        self.say(7, f"report -> {out}")
        title = o.title or f"{spec.name}: {self._cohort_words('outcome')} after {self._cohort_words('target')}"
        inputs = {"results": self.stages.output("evaluate"), "model": self.stages.output("model")["model_id"],
                  "title": title, "target": self._cohort_words("target"), "min_count": spec.evaluation.min_count,
                  "out": os.path.relpath(out, self.work)}
        if self.stage("report", inputs, (out / "report.html",)):
            t = time.perf_counter()
            prep = self._prepared(model, self.task_rows, text=False)
            path = write_report(out, results, model, prep=prep, cdm=self.cdm, title=title,
                                target=spec.target.name or self._cohort_words("target"),
                                min_count=spec.evaluation.min_count)
            self.stages.done("report", inputs, {"report": str(path)}, time.perf_counter() - t)
        return out / "report.html"

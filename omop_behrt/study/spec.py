"""The study spec: what an OHDSI study team decides, read from YAML or JSON with every field checked.

:class:`StudySpec` holds the source, target and outcome cohorts (ATLAS JSON, cohort ids or concept lists), time
at risk, vocabulary, model, methods and outputs; :func:`load_spec` reads one from a file (or a dict), checks
every field's type, choice and range, and raises :class:`SpecError` naming the file and the field. The contract
in one small file; :mod:`omop_behrt.study.run` runs it.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omop_behrt.tasks.cohorts import RESULTS_SCHEMA
from omop_behrt.shareable import MIN_COUNT

#: the specs shipped with the package (``omop-behrt demo`` runs the first)
STUDIES = Path(__file__).parent.parent / "studies"
DEMO_SPEC = STUDIES / "eunomia_gi_bleed.yaml"


class SpecError(ValueError):
    """A study spec that cannot run: the message names the spec file and the field."""


@dataclass
class Source:
    """The CDM: a DuckDB file, a SQLAlchemy URL, or ``eunomia`` (a private copy of the bundled demo CDM)."""
    cdm: str
    cdm_schema: str | None = None
    vocab_schema: str | None = None
    results_schema: str = RESULTS_SCHEMA
    cohort_table: str = "cohort"
    allow_cdm_schema: bool = False


@dataclass
class Cohort:
    """An ATLAS/CIRCE JSON (``atlas``), a first occurrence of ``concepts``, or an existing ``cohort_id``."""
    cohort_id: int | None = None
    atlas: str | None = None
    concepts: list[int] | None = None
    domains: list[str] | None = None
    descendants: bool = True
    name: str | None = None


@dataclass
class TimeAtRisk:
    """The PLP task's options (:func:`omop_behrt.tasks.labels.plp_task`)."""
    tar_start: int = 1
    tar_end: int = 365
    min_prior_observation: int = 0
    min_time_at_risk: int = 364
    include_all_outcomes: bool = True
    remove_prior_outcome: bool = True
    prior_outcome_lookback: int = 99999


@dataclass
class Split:
    fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    seed: int = 0


@dataclass
class Vocabulary:
    """``tokens``: what the model reads (pretraining); ``coverage``: vocabularies whose coverage is reported."""
    tokens: str = "source"
    coverage: list[str] | None = None


@dataclass
class Pretrain:
    config: str = "tiny"
    epochs: int = 10
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    min_count: int = 10


@dataclass
class Model:
    """An existing model ``directory``, or ``pretrain`` settings (pretrained on the study's censored events)."""
    directory: str | None = None
    pretrain: Pretrain | None = None


@dataclass
class Evaluation:
    methods: list[str] | None = None
    few_shot: list[float] | None = None
    bootstrap: int = 1000
    epochs: int = 8
    patience: int = 2
    head: str = "ffn"
    pooling: str = "mean"
    seed: int = 0
    jobs: int | None = None
    min_count: int = MIN_COUNT
    #: the text-* methods' language model: a local directory (relative to the spec) or the packaged one by name
    text_model: str = "all-MiniLM-L6-v2"
    #: the text-* methods' clinical notes (the CDM's note table): none, append or pooled
    text_notes: str = "none"


@dataclass
class OhdsiTables:
    """Embedding tables + cohort_attribute/attribute_definition; ``target: cdm`` writes into the source."""
    target: str = "cdm"
    schema: str | None = RESULTS_SCHEMA
    table: str = "patient_embedding"
    analysis_id: int = 990
    pooling: str = "cls"


@dataclass
class Outputs:
    work_dir: str | None = None
    report: str | None = None
    title: str | None = None
    ohdsi: OhdsiTables | None = None


@dataclass
class StudySpec:
    """A whole study; relative paths in it resolve against the folder of the file it came from (``base``)."""
    name: str
    source: Source
    target: Cohort
    outcome: Cohort
    model: Model
    description: str | None = None
    time_at_risk: TimeAtRisk = field(default_factory=TimeAtRisk)
    split: Split = field(default_factory=Split)
    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    evaluation: Evaluation = field(default_factory=Evaluation)
    outputs: Outputs = field(default_factory=Outputs)
    origin: str = field(default="<dict>", metadata={"internal": True})
    base: Path = field(default_factory=Path.cwd, metadata={"internal": True})

    def path(self, value: str) -> Path:
        """A path named in the spec: relative ones against the spec file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p

    def work_dir(self) -> Path:
        """outputs.work_dir, else ``./<name>``."""
        return self.path(self.outputs.work_dir) if self.outputs.work_dir else Path.cwd() / self.name

    def part(self, name: str) -> dict:
        """A section as plain JSON (what a stage's fingerprint records)."""
        return _plain(dataclasses.asdict(getattr(self, name)))


# -- reading and checking a spec -------------------------------------------------------------------
def load_spec(spec: str | Path | dict, overrides: dict | None = None) -> StudySpec:
    """A checked :class:`StudySpec` from a YAML/JSON file (or a dict), ``overrides`` merged in first."""
    if isinstance(spec, dict):
        data, origin, base = spec, "<dict>", Path.cwd()
    else:
        path = Path(spec)
        origin, base = str(path), path.resolve().parent
        try:
            text = path.read_text()
        except OSError as e:
            raise SpecError(f"{path}: cannot read the study spec: {e.strerror or e}") from None
        data = _parse(text, path)
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a study spec is a mapping of sections (name, source, target, ...); got "
                        f"{type(data).__name__}")
    data = _merged(data, overrides or {})
    for short, long in (("source", "cdm"), ("target", "cohort_id"), ("outcome", "cohort_id")):
        if isinstance(data.get(short), (str, int)) and not isinstance(data.get(short), bool):
            data[short] = {long: data[short]}         # source: file.duckdb / target: 1 (an existing cohort)
    spec = _read(StudySpec, data, origin, "")
    spec.origin, spec.base = origin, base
    _check(spec)
    return spec


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def _merged(data: dict, overrides: dict) -> dict:
    out = dict(data)
    for k, v in overrides.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(cls, data: Any, origin: str, where: str):
    """A dataclass from a mapping, every field's type checked; unknown keys refused."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: {where or 'the spec'}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise SpecError(f"{origin}: {where + '.' if where else ''}{unknown[0]}: unknown field; expected one of "
                        f"{', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        here = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{origin}: {here}: missing (required)")
            continue
        values[name] = _value(hints[name], data[name], origin, here)
    return cls(**values)


def _value(hint, value: Any, origin: str, where: str):
    args = typing.get_args(hint)
    if type(None) in args:                       # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _read(hint, value, origin, where)
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise SpecError(f"{origin}: {where}: expected a list of {args[0].__name__}, got {value!r}")
        return [_value(args[0], v, origin, f"{where}[{i}]") for i, v in enumerate(value)]
    ok = (isinstance(value, bool) if hint is bool else
          isinstance(value, int) and not isinstance(value, bool) if hint is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if hint is float else
          isinstance(value, str) and value.strip() != "" if hint is str else True)
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}[hint]
        raise SpecError(f"{origin}: {where}: expected {kind}, got {value!r}")
    return float(value) if hint is float else value


def _fail(spec: StudySpec, where: str, what: str) -> None:
    raise SpecError(f"{spec.origin}: {where}: {what}")


def _check(spec: StudySpec) -> None:
    """What the types do not say: choices, ranges, one of a kind, files present."""
    from omop_behrt.tasks.cohorts import _OCCURRENCE_TABLES
    from omop_behrt.db.database import SourceError, check_identifier
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", spec.name):
        _fail(spec, "name", f"expected letters, digits, _ . - (it names the work directory), got {spec.name!r}")
    for key in ("cdm_schema", "vocab_schema", "results_schema", "cohort_table"):
        if getattr(spec.source, key) is not None:
            try:
                check_identifier(getattr(spec.source, key), key)
            except (SourceError, ValueError) as e:
                _fail(spec, f"source.{key}", str(e))
    for role in ("target", "outcome"):
        c: Cohort = getattr(spec, role)
        if c.atlas is not None and c.concepts is not None:
            _fail(spec, f"{role}", "give one of atlas (a cohort JSON), concepts or cohort_id alone, not both atlas "
                                   "and concepts")
        if c.atlas is not None:
            path = spec.path(c.atlas)
            if not path.is_file():
                _fail(spec, f"{role}.atlas", f"{path} not found (relative paths start at the spec's folder)")
            if c.cohort_id is None and path.stem.isdigit():
                c.cohort_id = int(path.stem)           # 77.json is cohort 77, as ATLAS exports name them
        if c.concepts is not None and not c.concepts:
            _fail(spec, f"{role}.concepts", "expected at least one concept id")
        if c.cohort_id is None and not (role == "outcome" and c.concepts):
            _fail(spec, f"{role}.cohort_id", "missing: the id of an existing cohort, or the id to write the "
                                             f"{'ATLAS' if c.atlas else 'concept'} cohort under")
        if c.cohort_id is not None and c.cohort_id < 0:
            _fail(spec, f"{role}.cohort_id", f"expected a non-negative integer, got {c.cohort_id}")
        bad = [d for d in c.domains or () if d not in _OCCURRENCE_TABLES]
        if bad:
            _fail(spec, f"{role}.domains", f"unknown domain {bad[0]!r}; expected some of "
                                           f"{', '.join(_OCCURRENCE_TABLES)}")
        if c.domains is not None and c.concepts is None:
            _fail(spec, f"{role}.domains", "only for a concept cohort (concepts)")
    if (spec.target.cohort_id is not None and spec.target.cohort_id == spec.outcome.cohort_id
            and (spec.target.atlas or spec.target.concepts)):
        _fail(spec, "outcome.cohort_id", f"{spec.outcome.cohort_id} is the target's id too; give the outcome another")
    tar = spec.time_at_risk
    if tar.tar_start < 0 or tar.tar_end < tar.tar_start:
        _fail(spec, "time_at_risk", f"expected 0 <= tar_start <= tar_end (days after index), got tar_start "
                                    f"{tar.tar_start}, tar_end {tar.tar_end}")
    for key in ("min_prior_observation", "min_time_at_risk", "prior_outcome_lookback"):
        if getattr(tar, key) < 0:
            _fail(spec, f"time_at_risk.{key}", f"expected days >= 0, got {getattr(tar, key)}")
    fr = spec.split.fractions
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
        _fail(spec, "split.fractions", f"expected three fractions (train, val, test) >= 0 summing to 1, got {fr}")
    _check_model(spec)
    _check_evaluation(spec)
    o = spec.outputs.ohdsi
    if o is not None:
        if not 990 <= o.analysis_id <= 999:
            _fail(spec, "outputs.ohdsi.analysis_id", f"expected 990..999 (FeatureExtraction's custom range), got "
                                                     f"{o.analysis_id}")
        from omop_behrt.vectors.embed import POOLINGS
        if o.pooling not in POOLINGS:
            _fail(spec, "outputs.ohdsi.pooling", f"expected one of {', '.join(POOLINGS)}, got {o.pooling!r}")


def _check_model(spec: StudySpec) -> None:
    from omop_behrt.vocab.registry import get_vocabulary
    m = spec.model
    if (m.directory is None) == (m.pretrain is None):
        _fail(spec, "model", "give exactly one of directory (an existing model) or pretrain (settings)")
    if m.directory is not None and not (spec.path(m.directory) / "config.json").is_file():
        _fail(spec, "model.directory", f"{spec.path(m.directory)} is not a model directory (no config.json)")
    p = m.pretrain
    if p is not None:
        if p.config not in ("tiny", "behrt") and not spec.path(p.config).is_file():
            _fail(spec, "model.pretrain.config", f"expected tiny, behrt or a config.json file, got {p.config!r}")
        if p.device not in ("auto", "cpu", "cuda"):
            _fail(spec, "model.pretrain.device", f"expected auto, cpu or cuda, got {p.device!r}")
        for key in ("epochs", "max_steps", "threads", "min_count"):
            if getattr(p, key) is not None and getattr(p, key) < 1:
                _fail(spec, f"model.pretrain.{key}", f"expected a positive integer, got {getattr(p, key)}")
    for where, name in [("vocabulary.tokens", spec.vocabulary.tokens)] + [
            (f"vocabulary.coverage[{i}]", v) for i, v in enumerate(spec.vocabulary.coverage or [])]:
        try:
            get_vocabulary(name)
        except ValueError as e:
            _fail(spec, where, str(e))


def _check_evaluation(spec: StudySpec) -> None:
    from omop_behrt.evaluation.comparison import ALL_METHODS, METHODS, check_methods
    from omop_behrt.vectors.embed import POOLINGS
    from omop_behrt.evaluation.metrics import FRACTIONS
    from omop_behrt.evaluation.heads import HEADS
    e = spec.evaluation
    try:
        e.methods = check_methods(e.methods if e.methods is not None else list(METHODS), ALL_METHODS)
    except ValueError as err:
        _fail(spec, "evaluation.methods", str(err))
    e.few_shot = list(FRACTIONS) if e.few_shot is None else e.few_shot
    bad = [f for f in e.few_shot if not 0 < f <= 1]
    if bad:
        _fail(spec, "evaluation.few_shot", f"expected fractions of the training labels in (0, 1], got {bad[0]}")
    for key, choices in (("head", HEADS), ("pooling", POOLINGS), ("text_notes", ("none", "append", "pooled"))):
        if getattr(e, key) not in choices:
            _fail(spec, f"evaluation.{key}", f"expected one of {', '.join(choices)}, got {getattr(e, key)!r}")
    for key in ("bootstrap", "epochs", "patience", "jobs", "min_count"):
        if getattr(e, key) is not None and getattr(e, key) < 1:
            _fail(spec, f"evaluation.{key}", f"expected a positive integer, got {getattr(e, key)}")


def _plain(obj: Any) -> Any:
    """JSON-normal form (tuples as lists, paths as strings), so a record read back compares equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))

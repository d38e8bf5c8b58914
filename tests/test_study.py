"""A study in one command: a spec file runs every stage on Eunomia, re-runs resume, a changed spec redoes the
stages it changes (and only those), and a bad spec fails in one line naming the file and the field."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import yaml

from omop_behrt.cli.main import main
from omop_behrt.study.demo import GI_BLEED, NSAIDS
from omop_behrt.study.run import DEMO_SPEC, STAGES_ALL, SpecError, load_spec, run_study

ROOT = Path(__file__).parent.parent
PHENOTYPES = Path(__file__).parent / "data" / "ohdsi_phenotypes" / "cohorts"
NSAID_JSON = ROOT / "omop_behrt" / "studies" / "nsaid_new_users.json"

#: small and quick: 1 pretraining epoch, two methods, no few-shot curves, a small bootstrap
FAST = {"name": "fast", "source": "eunomia",
        "target": {"cohort_id": 1, "concepts": list(NSAIDS), "domains": ["drug"], "name": "first NSAID"},
        "outcome": {"concepts": [GI_BLEED], "name": "GI haemorrhage"},
        "model": {"pretrain": {"config": "tiny", "epochs": 1, "device": "cpu", "threads": 1}},
        "evaluation": {"methods": ["counts-lr", "embeddings-lr"], "few_shot": [], "bootstrap": 20, "jobs": 1},
        "outputs": {"ohdsi": {"target": "cdm", "analysis_id": 990}}}


def _write(folder: Path, spec: dict, name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(json.dumps(spec) if name.endswith(".json") else yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The fast spec run once: (spec file, work directory, the run)."""
    folder = tmp_path_factory.mktemp("study")
    spec = _write(folder, FAST)
    return spec, folder / "work", run_study(spec, folder / "work", progress=False)


def test_the_demo_is_a_packaged_spec():
    spec = load_spec(DEMO_SPEC)
    assert spec.source.cdm == "eunomia" and spec.target.concepts == list(NSAIDS)
    assert spec.outcome.concepts == [GI_BLEED] and spec.outcome.cohort_id is None
    assert spec.model.pretrain.epochs == 10 and spec.evaluation.bootstrap == 500
    assert spec.evaluation.methods[0] == "embeddings-lr" and len(spec.evaluation.methods) == 6
    assert load_spec(DEMO_SPEC, {"model": {"pretrain": {"epochs": 2}}}).model.pretrain.epochs == 2


def test_json_and_yaml_specs_are_the_same(tmp_path):
    a, b = load_spec(_write(tmp_path, FAST)), load_spec(_write(tmp_path, FAST, "study.json"))
    assert a.part("target") == b.part("target") and a.part("evaluation") == b.part("evaluation")
    assert a.time_at_risk.tar_end == 365 and a.split.fractions == [0.6, 0.2, 0.2]      # the defaults


def test_a_study_runs_every_stage(first):
    _, work, run = first
    assert run.ran == list(STAGES_ALL) and run.skipped == []
    assert run.cohorts["target"]["entries"] == 2694 and run.cohorts["outcome"] is None
    assert run.attrition == {"target entries": 2694, "excluded: too little time at risk": 12,
                             "excluded: index date outside every observation period": 8, "kept": 2674,
                             "outcomes": 311}
    for f in ("eunomia.duckdb", "task/labels.parquet", "task/split.parquet", "events/manifest.json",
              "model/model.safetensors", "evaluation.json", "report/report.html", "report/results.json",
              "study.json"):
        assert (work / f).exists(), f
    assert list(run.results["methods"]) == ["counts-lr", "embeddings-lr"]
    assert run.results["n"]["test"] == {"rows": 535, "positives": 64, "persons": 535}
    shared = json.loads((work / "report" / "results.json").read_text())
    assert "test_predictions" not in shared                       # the report folder holds aggregates only
    con = duckdb.connect(str(work / "eunomia.duckdb"), read_only=True)
    try:
        emb = con.execute("SELECT count(*), min(cohort_definition_id), max(cohort_definition_id) "
                          "FROM results.patient_embedding").fetchone()
        attrs = con.execute("SELECT count(*), count(DISTINCT attribute_definition_id) FROM results.cohort_attribute "
                            "WHERE cohort_definition_id = 1").fetchone()
    finally:
        con.close()
    assert emb == (2664, 1, 1)             # the task's 2,674 rows but the 10 without history before the index
    assert attrs == (2664 * 64, 64)         # one row per person and dimension, ids k*1000 + 990


def test_a_rerun_resumes_and_a_changed_spec_redoes_its_stages(first, tmp_path, capsys):
    spec, work, run = first
    results = (work / "evaluation.json").read_bytes()
    report = (work / "report" / "report.html").stat().st_mtime_ns
    capsys.readouterr()
    again = run_study(spec, work, progress=False)
    out = capsys.readouterr().out
    assert again.ran == [] and again.skipped == list(STAGES_ALL)
    assert out.count("unchanged since the last run, skipped") == len(STAGES_ALL)
    assert (work / "evaluation.json").read_bytes() == results
    assert (work / "report" / "report.html").stat().st_mtime_ns == report
    assert again.results["methods"] == run.results["methods"]

    def rerun(change: dict) -> tuple[list[str], str]:
        capsys.readouterr()
        r = run_study(load_spec(spec, change), work, progress=False)
        return r.ran, capsys.readouterr().out

    ran, out = rerun({"evaluation": {"bootstrap": 30}})
    assert ran == ["evaluate", "report"] and "evaluate: redone (changed: evaluation)" in out
    ran, out = rerun({"evaluation": {"bootstrap": 30}, "split": {"seed": 1}})
    assert ran == ["task", "evaluate", "report"]      # same index dates: the events, model and vectors stand
    assert "task: redone (changed: split)" in out
    change = {"evaluation": {"bootstrap": 30}, "split": {"seed": 1},
              "time_at_risk": {"tar_end": 180, "min_time_at_risk": 179}}
    ran, _ = rerun(change)
    assert ran == ["task", "extract", "coverage", "model", "embeddings", "evaluate", "report"]
    # the same model given as a directory: recorded, and nothing after it is redone
    change["model"] = {"directory": str(work / "model"), "pretrain": None}
    ran, out = rerun(change)
    assert ran == ["model"] and "model: redone (changed: " in out
    # rows deleted from the cohort table behind the study's back: the cohorts are written again
    con = duckdb.connect(str(work / "eunomia.duckdb"))
    con.execute("DELETE FROM results.cohort WHERE cohort_definition_id = 1")
    con.close()
    ran, out = rerun(change)
    assert ran == ["cohorts"] and "cohorts: redone (cohort 1 has no rows" in out
    # the command line resumes the same study (written out as a spec file); --no-resume redoes every stage
    changed = json.loads(json.dumps(FAST))
    for k, v in change.items():
        changed[k] = {**changed.get(k, {}), **v}
    same = _write(tmp_path, changed)
    assert main(["study", "--spec", str(same), "--work-dir", str(work), "--quiet"]) == 0
    assert capsys.readouterr().out.count("since the last run, skipped") == len(STAGES_ALL)
    assert main(["study", "--spec", str(same), "--work-dir", str(work), "--quiet", "--no-resume"]) == 0
    out = capsys.readouterr().out
    assert "since the last run" not in out and out.count("redone (--no-resume)") == len(STAGES_ALL)


def test_atlas_target_and_outcome(tmp_path, capsys):
    """The NSAID new users (ATLAS JSON) -> the Phenotype Library's GI bleeding with inpatient admission (77)."""
    if not NSAID_JSON.exists():
        pytest.skip(f"{NSAID_JSON} is not in this tree")
    spec = dict(FAST, name="atlas", target={"atlas": str(NSAID_JSON), "cohort_id": 1},
                outcome={"atlas": str(PHENOTYPES / "77.json")}, outputs={})
    path = _write(tmp_path, spec)
    run = run_study(path, tmp_path / "work", progress=False)
    out = capsys.readouterr().out
    assert run.cohorts["target"]["entries"] == 2686 and run.cohorts["outcome"]["cohort_id"] == 77
    assert run.cohorts["outcome"]["persons"] == 391        # as the issue measured it on Eunomia
    assert run.attrition["kept"] == 2673 and run.attrition["outcomes"] == 252
    assert "ATLAS 77.json" in out and "ATLAS nsaid_new_users.json" in out
    # an edited definition regenerates the cohorts; the same rows leave every later stage as it was
    edited = json.loads((PHENOTYPES / "77.json").read_text())
    edited["title"] = "renamed"
    (tmp_path / "77.json").write_text(json.dumps(edited))
    again = run_study(load_spec(path, {"outcome": {"atlas": str(tmp_path / "77.json")}}),
                      tmp_path / "work", progress=False)
    assert again.ran == ["cohorts"], again.ran


@pytest.mark.parametrize("change,field", [
    ({"targte": {}}, "targte: unknown field"),
    ({"target": {"atlsa": "x.json"}}, "target.atlsa: unknown field"),
    ({"time_at_risk": {"tar_end": "365"}}, "time_at_risk.tar_end: expected an integer"),
    ({"time_at_risk": {"tar_start": 30, "tar_end": 10}}, "time_at_risk: expected 0 <= tar_start <= tar_end"),
    ({"evaluation": {"methods": ["counts-lr", "countslr"]}}, "evaluation.methods: unknown method countslr"),
    ({"evaluation": {"few_shot": [0, 0.5]}}, "evaluation.few_shot: expected fractions"),
    ({"evaluation": {"pooling": "max"}}, "evaluation.pooling: expected one of cls, mean, last_visit"),
    ({"outputs": {"ohdsi": {"analysis_id": 42}}}, "outputs.ohdsi.analysis_id: expected 990..999"),
    ({"model": {"directory": "m", "pretrain": {}}}, "model: give exactly one of directory"),
    ({"model": {"pretrain": {"config": "huge"}}}, "model.pretrain.config: expected tiny, behrt"),
    ({"split": {"fractions": [0.5, 0.5]}}, "split.fractions: expected three fractions"),
    ({"target": {"atlas": "missing.json", "concepts": None}}, "target.atlas: "),
    ({"target": {"concepts": [], "cohort_id": 1}}, "target.concepts: expected at least one"),
    ({"target": {"domains": ["drugs"]}}, "target.domains: unknown domain 'drugs'"),
    ({"target": {"cohort_id": None}}, "target.cohort_id: missing"),
    ({"outcome": {"cohort_id": 1, "concepts": None}}, "outcome.cohort_id: 1 is the target's id too"),
    ({"vocabulary": {"tokens": "snowmed"}}, "vocabulary.tokens: unknown vocabulary 'snowmed'"),
    ({"source": {"cdm": "x.duckdb", "results_schema": "bad name"}}, "source.results_schema"),
    ({"name": "my study"}, "name: expected letters"),
    ({"name": None}, "name: expected a non-empty string"),
])
def test_a_bad_spec_names_the_file_and_the_field(tmp_path, change, field):
    path = _write(tmp_path, {**FAST, **{k: v for k, v in change.items() if k not in FAST}})
    with pytest.raises(SpecError) as e:
        load_spec(path, {k: v for k, v in change.items() if k in FAST})
    assert str(e.value).startswith(f"{path}: {field}"), str(e.value)
    assert "\n" not in str(e.value)


def test_a_bad_spec_file_fails_in_one_line_on_the_command_line(tmp_path, capsys):
    bad = tmp_path / "study.yaml"
    bad.write_text("name: x\nsource: eunomia\ntarget: [1\n")
    assert main(["study", "--spec", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"omop-behrt study: error: {bad}: not valid YAML at line ") and "\n" not in err
    missing = {k: v for k, v in FAST.items() if k != "model"}
    assert main(["study", "--spec", str(_write(tmp_path, missing, "s.json"))]) == 2
    assert "s.json: model: missing (required)" in capsys.readouterr().err


def test_text_methods_in_a_study(tmp_path):
    """A spec may name the text encoder's methods; its text model (a directory beside the spec) is used, and a
    different text model redoes the evaluation."""
    pytest.importorskip("transformers", reason="the text encoder needs transformers (omop-behrt[text])")
    from test_text_encoder import _bert_dir

    from omop_behrt.text.serialize import SERIALIZER_VERSION
    _bert_dir(tmp_path / "bert")
    spec = dict(FAST, name="text", outputs={},
                evaluation=dict(FAST["evaluation"], methods=["counts-lr", "text-lr"], text_model="bert"))
    run = run_study(_write(tmp_path, spec), tmp_path / "work", progress=False)
    text = run.results["text"]
    assert text["text_model"]["name"] == "bert" and text["serializer_version"] == SERIALIZER_VERSION
    assert set(run.results["methods"]) >= {"counts-lr", "text-lr"}
    _bert_dir(tmp_path / "bert2", seed=1)
    again = run_study(load_spec(_write(tmp_path, spec), {"evaluation": {"text_model": "bert2"}}), tmp_path / "work",
                      progress=False)
    assert "evaluate" in again.ran and "model" not in again.ran


def test_cohorts_in_a_folder_of_exports(synthea_dir, tmp_path, capsys):
    """A folder of CSV exports is read through an in-memory database: the study keeps one open for its cohorts
    (written, then read back by the task), while a lone `cohort` command into it is refused, not lost."""
    from omop_behrt.cli.main import main
    from omop_behrt.study.run import Stages, _Run
    spec = dict(FAST, name="folder", source={"cdm": str(synthea_dir)},
                target={"cohort_id": 1, "concepts": [40481087], "domains": ["condition"], "name": "viral sinusitis",
                        "descendants": False},
                outcome={"concepts": [260139], "name": "acute bronchitis", "descendants": False}, outputs={})
    (tmp_path / "work").mkdir()
    run = _Run(load_spec(_write(tmp_path, spec)), tmp_path / "work", Stages(tmp_path / "work", True), False, 1, "t")
    cohorts, task, split = run.task()
    assert cohorts["target"]["entries"] == 64 and cohorts["target"]["persons"] == 64    # every sinusitis patient
    assert 0 < task.labels.num_rows <= 64 and len(split) == task.labels.num_rows
    assert main(["cohort", "first-occurrence", "--source", str(synthea_dir), "--cohort-id", "1",
                 "--concepts", "40481087", "--no-descendants"]) != 0
    assert "would be gone when this command ends" in capsys.readouterr().err

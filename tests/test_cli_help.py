"""The command line explains itself: every command and option has help, every default is shown, names typed
by a user are plain; and one results schema (``results``) links ``cohort`` to the stages that read cohorts."""
from __future__ import annotations

import argparse
import filecmp

import pyarrow.compute as pc
import pytest

from omop_behrt import EventDir
from omop_behrt.cli.main import build_parser, main, shown_default
from omop_behrt.tasks.cohorts import RESULTS_SCHEMA, CohortTable
from omop_behrt.evaluation.comparison import METHODS
from omop_behrt.study.demo import eunomia_path

NO_HELP_NEEDED = {"-h", "--help", "--version"}


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), helptext: str | None = None):
    """(command path, parser, its one-line help) for the root and every subcommand, nested ones too."""
    yield path, parser, helptext
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,), helps.get(name))


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)
            and not NO_HELP_NEEDED & set(a.option_strings)]


COMMANDS = list(_walk(build_parser()))
IDS = [" ".join(p) or "omop-behrt" for p, _, _ in COMMANDS]


def test_the_walk_sees_every_command():
    names = {" ".join(p) for p, _, _ in COMMANDS}
    assert {"extract", "to-meds", "from-meds", "demo", "demo-cdm", "pretrain", "vocab report", "vocab map",
            "vocab list", "cohort first-occurrence", "cohort min-visits", "embed", "task plp", "task behrt",
            "finetune", "evaluate", "check-shareable"} <= names


@pytest.mark.parametrize("path,parser,helptext", COMMANDS, ids=IDS)
def test_every_command_has_help_and_description(path, parser, helptext):
    assert parser.description and len(parser.description) > 20, f"{path}: no description"
    if path:
        assert helptext and len(helptext) > 10, f"{path}: no one-line help in the parent's list"
        assert "\n" not in helptext


@pytest.mark.parametrize("path,parser,helptext", COMMANDS, ids=IDS)
def test_every_option_has_help_and_shows_its_default(path, parser, helptext):
    formatter = parser._get_formatter()
    parser.format_help()                 # renders (a stray '%' in a help string would fail here)
    for action in _options(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS, f"{' '.join(path)} {name}: no help"
        shown = formatter._expand_help(action)
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {shown_default(action.default)})" in shown, f"{' '.join(path)} {name}: {shown!r}"
            assert shown.count("default") == 1, f"{' '.join(path)} {name} says its default twice: {shown!r}"


def test_defaults_as_typed():
    assert shown_default(5e-4) == "0.0005" and shown_default([0.6, 0.2, 0.2]) == "0.6,0.2,0.2"
    pretrain = next(p for c, p, _ in COMMANDS if c == ("pretrain",))
    text = " ".join(pretrain.format_help().split())
    for expected in ("--seed SEED seed of", "(default: 0)", "peak learning rate (default: 0.0005)",
                     "passes over the training persons (default: 10)"):
        assert expected in text


def test_names_a_user_types_are_plain():
    """Subcommands, choices and method names: no spaces or parentheses (they are typed on a command line)."""
    typed = set()
    for path, parser, _ in COMMANDS:
        typed.update(path)
        for action in _options(parser):
            typed.update(str(c) for c in action.choices or ())
    evaluate = next(p for c, p, _ in COMMANDS if c == ("evaluate",))
    methods = next(a for a in evaluate._actions if "--methods" in a.option_strings)
    typed.update(methods.default.split(","))
    typed.update(METHODS)
    assert {"cls", "mean", "ffn", "first-occurrence", "plp"} <= typed
    bad = sorted(t for t in typed if any(ch in t for ch in " ()"))
    assert not bad, f"names with spaces or parentheses: {bad}"


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS], ids=IDS)
def test_help_exits_zero(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: omop-behrt")


def test_results_schema_default_is_one(capsys):
    """cohort writes where extract, embed and task read: RESULTS_SCHEMA, said in each one's help."""
    assert RESULTS_SCHEMA == "results"
    for cmd in (("cohort", "first-occurrence"), ("cohort", "min-visits"), ("extract",), ("embed",),
                ("task", "plp")):
        parser = next(p for c, p, _ in COMMANDS if c == cmd)
        action = next(a for a in parser._actions if "--results-schema" in a.option_strings)
        shown = parser._get_formatter()._expand_help(action)
        assert "(default: results" in shown, cmd
    embed = next(p for c, p, _ in COMMANDS if c == ("embed",))
    assert "(default: results;" in " ".join(embed.format_help().split())       # the target --schema too


# -- the results schema, end to end ----------------------------------------------------------------
@pytest.fixture
def cdm_copy(tmp_path, capsys):
    out = tmp_path / "cdm.duckdb"
    assert main(["demo-cdm", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    return out


def test_demo_cdm_copies_eunomia_and_refuses_to_overwrite(cdm_copy, tmp_path, capsys):
    assert filecmp.cmp(cdm_copy, eunomia_path(), shallow=False)
    assert main(["demo-cdm", "--out", str(cdm_copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cdm_copy} exists; pass --force" in err
    cdm_copy.write_bytes(b"not a database")
    assert main(["demo-cdm", "--out", str(cdm_copy), "--force"]) == 0
    assert filecmp.cmp(cdm_copy, eunomia_path(), shallow=False)
    assert main(["demo-cdm", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["cdm.duckdb"]       # no part file left behind


def test_cohort_then_extract_without_results_schema(cdm_copy, tmp_path, capsys):
    """The Tour's order: `cohort` then `extract --cohort-id` with no --results-schema on either."""
    assert main(["cohort", "first-occurrence", "--source", str(cdm_copy), "--cohort-id", "3",
                 "--concepts", "192671"]) == 0
    assert "cohort 3: 479 persons written to results.cohort" in capsys.readouterr().out
    assert main(["extract", "--source", str(cdm_copy), "--out", str(tmp_path / "ev"), "--cohort-id", "3",
                 "--domains", "condition", "--quiet"]) == 0
    persons = EventDir.open(tmp_path / "ev").persons()["subject_id"]
    cohort = CohortTable(cdm_copy).read(3)["subject_id"]        # the Python API's default: the same schema
    assert len(persons) == 479
    assert set(persons.to_pylist()) == set(cohort.to_pylist())
    from omop_behrt.adapters import omop
    omop.extract(cdm_copy, tmp_path / "ev2", progress=False,
                 options=omop.ExtractOptions(cohort_id=3, domains=["condition"]))
    assert pc.count_distinct(EventDir.open(tmp_path / "ev2").persons()["subject_id"]).as_py() == 479


@pytest.mark.parametrize("argv", [
    ["extract", "--out", "{tmp}/ev", "--cohort-id", "3"],
    ["task", "plp", "--out", "{tmp}/task", "--target-cohort-id", "3", "--outcome-concepts", "192671"],
], ids=["extract", "task"])
def test_missing_cohort_table_is_one_line_saying_how_to_make_it(cdm_copy, tmp_path, capsys, argv):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--source", str(cdm_copy)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "cohort table results.cohort not found" in err and "(no schema results)" in err
    assert "omop-behrt cohort first-occurrence" in err and "--domains" not in err

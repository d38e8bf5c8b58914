"""The command line, as a user runs it: exit codes, summaries, errors on stderr."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from omop_behrt import EventDir
from omop_behrt.cli.main import main


def test_extract_cli(eunomia_db, tmp_path, capsys):
    rc = main(["extract", "--source", str(eunomia_db), "--out", str(tmp_path / "ev"), "--quiet",
               "--domains", "condition,drug", "--start", "2005-01-01", "--json", str(tmp_path / "s.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "persons       2,694" in out and "OMOP CDM 5.3" in out and "condition" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert set(s["events_by_domain"]) == {"condition", "drug"}
    assert EventDir.open(tmp_path / "ev").events().count_rows() == s["events_out"]


def test_extract_cli_errors(tmp_path, capsys):
    rc = main(["extract", "--source", str(tmp_path / "nope.duckdb"), "--out", str(tmp_path / "ev")])
    assert rc == 2
    assert "neither an existing DuckDB file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["extract", "--source", "x", "--out", "y", "--start", "2020-13-01"])
    assert "expected a date as YYYY-MM-DD" in capsys.readouterr().err


def test_meds_cli(eunomia_events, tmp_path, capsys):
    assert main(["to-meds", "--events", str(eunomia_events.path), "--out", str(tmp_path / "meds")]) == 0
    assert main(["from-meds", "--meds", str(tmp_path / "meds"), "--out", str(tmp_path / "back")]) == 0
    assert "217,014 events" in capsys.readouterr().out


def test_console_script_installed(tmp_path):
    """The `omop-behrt` console script exists and runs (what `pip install .` promises)."""
    exe = shutil.which("omop-behrt") or str(__import__("pathlib").Path(sys.executable).parent / "omop-behrt")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("omop-behrt ")
    r = subprocess.run([exe, "extract", "--help"], capture_output=True, text=True, timeout=120)
    assert "--cdm-schema" in r.stdout


def test_sql_ships_as_package_data():
    from importlib import resources
    names = {p.name for p in (resources.files("omop_behrt.sql") / "omop").iterdir()}
    assert {"events.sql", "persons.sql", "observation_periods.sql"} <= names

"""The command line under faults: Ctrl-C and OS errors are one line, and the package imports from a checkout."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from omop_behrt.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def test_import_from_repository_root_without_editable_finder():
    """`python -c "import omop_behrt"` from the root: the local folder shadows any wheel and must still work."""
    # -S: no site processing, so no editable-install finder; site-packages only through PYTHONPATH for deps
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    code = ("import omop_behrt, omop_behrt.adapters as a, omop_behrt.db.database as d, omop_behrt.vocab.caliber as c;"
            "print(a.__file__); print(len(d.load_sql('omop/events.sql')) > 0); print(c.caliber_codes().num_rows)")
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    adapters_file, sql_ok, caliber_rows = r.stdout.split()
    assert Path(adapters_file).resolve() == ROOT / "adapters" / "__init__.py"
    assert sql_ok == "True" and int(caliber_rows) > 1000


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "omop_behrt", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("omop-behrt ")


@pytest.mark.parametrize("how", ["python", "duckdb", "duckdb-scan"])
@pytest.mark.parametrize("command", ["extract", "pretrain", "embed"])
def test_ctrl_c_is_one_line(command, how, monkeypatch, capsys):
    """Ctrl-C as Python's KeyboardInterrupt, as DuckDB's "Query interrupted" when it lands inside a query, or as
    DuckDB's InvalidInputException when it lands while DuckDB scans a registered Arrow object."""
    def interrupted(args):
        if how == "duckdb":
            raise RuntimeError("Query interrupted")
        if how == "duckdb-scan":
            import duckdb
            raise duckdb.InvalidInputException("Invalid Input Error: counting the rows of the object registered as "
                                               "'p' failed: KeyboardInterrupt: ")
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    argv = {"extract": ["extract", "--source", "x", "--out", "y"],
            "pretrain": ["pretrain", "--events", "x", "--out", "y"],
            "embed": ["embed", "--model", "m", "--source", "s", "--cohort", "c.csv", "--out", "o.parquet"]}[command]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"omop-behrt {command}: interrupted; run again with --resume to continue"]


def test_disk_full_is_one_line(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/events/part-0.parquet")
    monkeypatch.setitem(cli.COMMANDS, "extract", full)
    assert cli.main(["extract", "--source", "x", "--out", "y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["omop-behrt extract: error: No space left on device: /data/out/events/part-0.parquet"]

"""An instant command line: building the parser (``omop-behrt --help``) imports no heavy library, the choices it
shows are the library's own, and the public names of ``omop_behrt`` still import (lazily, PEP 562)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "sklearn", "pandas", "pyarrow", "duckdb", "scipy", "numpy", "sqlalchemy", "tqdm", "safetensors")


def _python(code: str) -> str:
    """Run code in a fresh interpreter (this one has imported everything already); its stdout."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_building_the_parser_imports_nothing_heavy():
    out = _python("import sys, omop_behrt.cli.main as c; c.build_parser(); "
                  f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    assert out == "[]", f"building the parser imported: {out}"


def test_every_subcommand_help_imports_nothing_heavy():
    """Each command's --help in one fresh process (main's exit 0 per command), and still no heavy import."""
    out = _python(
        "import argparse, contextlib, io, sys\n"
        "import omop_behrt.cli.main as c\n"
        "def walk(p, path=()):\n"
        "    yield path\n"
        "    for a in p._actions:\n"
        "        if isinstance(a, argparse._SubParsersAction):\n"
        "            for name, sub in a.choices.items():\n"
        "                yield from walk(sub, path + (name,))\n"
        "paths = list(walk(c.build_parser()))\n"
        "for path in paths:\n"
        "    buf = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(buf):\n"
        "            c.main([*path, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0 and buf.getvalue().startswith('usage: omop-behrt'), (path, e.code)\n"
        "print(','.join(' '.join(p) for p in paths if p))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    paths, heavy = out.splitlines()
    assert {"extract", "pretrain", "vocab map", "cohort atlas", "embed", "task plp", "finetune", "evaluate",
            "benchmark", "check-shareable", "study"} <= set(paths.split(",")), paths
    assert heavy == "[]", f"a command's --help imported: {heavy}"


def test_console_script_help_and_version():
    r = subprocess.run([sys.executable, "-m", "omop_behrt", "extract", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--cohort-id" in r.stdout and "(default: results" in " ".join(r.stdout.split())
    from omop_behrt import __version__
    r = subprocess.run([sys.executable, "-m", "omop_behrt", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"omop-behrt {__version__}\n", "")


def test_choices_are_the_librarys_own():
    """One definition: the heavy modules re-export choices.py's objects, and the parser offers exactly those."""
    from omop_behrt import choices
    from omop_behrt.tasks import cohorts
    from omop_behrt.evaluation import comparison
    from omop_behrt.vectors import embed
    from omop_behrt.evaluation import metrics as evaluate
    from omop_behrt.evaluation import heads
    from omop_behrt.text import encoder as text_encoder
    from omop_behrt.cli.main import build_parser
    assert comparison.METHODS is choices.METHODS and comparison.ALL_METHODS is choices.ALL_METHODS
    assert comparison.TEXT_METHODS is choices.TEXT_METHODS and heads.HEADS is choices.HEADS
    assert embed.POOLINGS is choices.POOLINGS and evaluate.FRACTIONS is choices.FRACTIONS
    assert text_encoder.POOLINGS is choices.TEXT_POOLINGS and cohorts.RESULTS_SCHEMA is choices.RESULTS_SCHEMA
    assert set(choices.BENCHMARK_METHODS) <= set(choices.METHODS)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices

    def option(cmd: str, flag: str):
        return next(a for a in sub[cmd]._actions if flag in a.option_strings)
    assert tuple(option("evaluate", "--head").choices) == ("ffn", "gru", "linear")
    assert tuple(option("evaluate", "--pooling").choices) == ("cls", "mean", "last_visit")
    assert tuple(option("embed", "--pooling").choices) == embed.POOLINGS
    assert tuple(option("embed", "--text-pooling").choices) == text_encoder.POOLINGS
    assert tuple(option("benchmark", "--pooling").choices) == embed.POOLINGS
    assert option("evaluate", "--methods").default == ",".join(comparison.METHODS)
    assert option("evaluate", "--few-shot").default == [0.01, 0.05, 0.1, 0.25, 1.0]
    assert option("benchmark", "--methods").default == "counts-lr,counts-gbm,embeddings-lr,embeddings-counts"


def test_public_names_import_lazily():
    """``import omop_behrt`` loads none of its submodules; a public name loads its own on first use."""
    out = _python("import sys, omop_behrt as o; print(sorted(m for m in sys.modules if m.startswith('omop_behrt')))")
    assert out == "['omop_behrt']"
    out = _python("import sys, omop_behrt as o; import omop_behrt\n"
                  "from omop_behrt import EventDir, SourceError, extract, cohorts, write_embeddings\n"
                  "print(EventDir.__module__, SourceError.__module__, extract.__module__, cohorts.__name__, "
                  "write_embeddings.__module__, 'torch' in sys.modules)")
    assert out == ("omop_behrt.events omop_behrt.db.database omop_behrt.adapters.omop omop_behrt.tasks.cohorts "
                   "omop_behrt.vectors.export False")
    import omop_behrt
    assert set(omop_behrt.__all__) <= set(dir(omop_behrt))
    for name in omop_behrt.__all__:
        assert getattr(omop_behrt, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        omop_behrt.nope  # noqa: B018
    from omop_behrt.vectors import export_parquet          # a submodule that is no public name still imports
    assert export_parquet.__name__ == "omop_behrt.vectors.export_parquet"


def test_extract_leaves_pandas_unimported_and_writes_the_same(eunomia_db, tmp_path):
    """pyarrow imports pandas (0.3 s) on its first conversion of Python values only to ask whether they are pandas
    objects; `extract` answers that probe "no pandas" (``startup.skip_pyarrow_pandas_probe``): a fresh process
    extracts Eunomia to MEDS and an event directory without importing pandas, and writes what this process (pandas
    imported) writes; pandas is still there for pyarrow when asked for it afterwards."""
    import pyarrow.parquet as pq

    from omop_behrt.cli.main import main
    fresh, here = tmp_path / "fresh", tmp_path / "here"
    out = _python(
        "import sys\n"
        "from omop_behrt.cli.main import main\n"
        f"assert main(['extract', '--source', {str(eunomia_db)!r}, '--out', {str(fresh / 'events')!r}, "
        f"'--meds-out', {str(fresh / 'meds')!r}, '--quiet']) == 0\n"
        "print('pandas' in sys.modules)\n"
        "import pyarrow as pa\n"
        "df = pa.table({'a': [1, 2]}).to_pandas()\n"
        "print(type(df).__module__.split('.')[0], pa.Table.from_pandas(df)['a'].to_pylist())")
    assert out.splitlines()[-2:] == ["False", "pandas [1, 2]"], out
    assert main(["extract", "--source", str(eunomia_db), "--out", str(here / "events"), "--meds-out",
                 str(here / "meds"), "--quiet"]) == 0
    for rel in ("meds/data/0.parquet", "meds/metadata/codes.parquet", "events/persons.parquet"):
        a, b = pq.read_table(fresh / rel), pq.read_table(here / rel)
        assert a.num_rows > 0 and a.equals(b), rel
    assert pq.read_table(fresh / "meds/data/0.parquet").num_rows == 225_096


def test_fhir_workers_leave_pandas_unimported(tmp_path):
    """FHIR extraction's worker processes run only our code, so they answer pyarrow's pandas probe "no" too (each
    imported pandas before: 0.3 CPU-s a worker). The parent is a user's process: its probe is left alone, and
    pyarrow still recognises its pandas objects after the run; the run writes what one worker writes."""
    import pyarrow.parquet as pq

    from omop_behrt.adapters import fhir
    src = Path(__file__).parent / "data" / "fhir"
    out = _python(
        "import sys\n"
        "from omop_behrt.adapters import fhir_pool\n"
        "def probe(_):\n"
        "    import pyarrow as pa\n"
        "    pa.array([1, 2])\n"
        "    return 'pandas' in sys.modules\n"
        "seen = []\n"
        "fhir_pool.run_parts(probe, [0, 1, 2, 3], 2, lambda a, r: seen.append(r))\n"
        "print(seen, 'pandas' in sys.modules)\n"
        "from omop_behrt.adapters import fhir\n"
        f"fhir.extract({str(src)!r}, {str(tmp_path / 'two')!r}, workers=2, progress=False)\n"
        "import pandas as pd, pyarrow as pa\n"
        "print(pa.array(pd.Series([1.5, None])).to_pylist())")
    assert out.splitlines() == ["[False, False, False, False] False", "[1.5, None]"], out
    fhir.extract(src, tmp_path / "one", workers=1, progress=False)
    for rel in ("persons.parquet", "observation_periods.parquet"):
        assert pq.read_table(tmp_path / "two" / rel).equals(pq.read_table(tmp_path / "one" / rel)), rel
    keys = [(c, "ascending") for c in ("subject_id", "time", "code", "visit_id", "numeric_value", "end_time")]
    from omop_behrt.events import EventDir
    a, b = EventDir.open(tmp_path / "two").read_events(), EventDir.open(tmp_path / "one").read_events()
    assert a.num_rows == b.num_rows > 0 and a.sort_by(keys).equals(b.sort_by(keys))

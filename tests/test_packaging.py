"""Packaging: the core runs without the optional extras, and a missing extra says which one to install.

A child interpreter blocks matplotlib, psycopg and fhir.resources (as if `pip install omop-behrt` without
extras), then imports every core module, reads FHIR without validation and asks for what needs an extra.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
BUNDLES = Path(__file__).parent / "data" / "fhir" / "bundles"

BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("matplotlib", "psycopg", "fhir"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None
    sys.meta_path.insert(0, Block())
    import importlib.util
    _find = importlib.util.find_spec
    importlib.util.find_spec = lambda n, *a: None if n.split(".")[0] in ("matplotlib", "psycopg", "fhir") else _find(n, *a)
""")


def _child(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


def test_extras_are_declared_and_the_core_does_not_need_them():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(meta["dependencies"])
    extras = meta["optional-dependencies"]
    for extra, package in (("postgres", "psycopg"), ("fhir-validate", "fhir.resources"), ("report", "matplotlib")):
        assert any(d.startswith(package) for d in extras[extra]), extra
        assert package not in core, f"{package} is an extra ([{extra}]), not a core dependency"
    assert set(extras["all"][0].split("[")[1].rstrip("]").split(",")) >= {"postgres", "fhir-validate", "report"}


def test_core_imports_and_reads_fhir_without_extras(tmp_path):
    r = _child(f"""
        import pkgutil, importlib, sys
        import omop_behrt, omop_behrt.adapters
        skip = {{"omop_behrt.evaluation.report", "omop_behrt.__main__"}}     # the report is the [report] extra
        for pkg in (omop_behrt, omop_behrt.adapters):
            for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
                if m.name not in skip:
                    importlib.import_module(m.name)
        assert not any(k.split(".")[0] in ("matplotlib", "psycopg", "fhir") for k in sys.modules)
        from omop_behrt.adapters import fhir
        s = fhir.extract({str(BUNDLES)!r}, "events", progress=False)
        print(s.table())
    """, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FHIR, 5 files" in r.stdout and "quarantined" in r.stdout


def test_missing_extras_name_the_extra(tmp_path):
    r = _child(f"""
        from omop_behrt.adapters import fhir
        from omop_behrt.db.database import Database, SourceError
        try:
            fhir.extract({str(BUNDLES)!r}, "events", validate=True, progress=False)
        except ValueError as e:
            print("FHIR:", e)
        try:
            Database.connect("postgresql://postgres@127.0.0.1:5432/test")
        except SourceError as e:
            print("PG:", e)
        try:
            import omop_behrt.evaluation.report
        except ModuleNotFoundError as e:
            print("REPORT:", e)
    """, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FHIR: --validate checks resources with fhir.resources: pip install 'omop-behrt[fhir-validate]'" in r.stdout
    assert "PG: PostgreSQL sources need psycopg 3: pip install 'omop-behrt[postgres]'" in r.stdout
    assert "REPORT:" in r.stdout and "omop-behrt[report]" in r.stdout

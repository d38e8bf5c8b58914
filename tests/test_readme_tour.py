"""The README's Tour, run verbatim: every command of its first bash block, in order, in an empty folder.

The block is parsed from README.md (comments and blank lines skipped, backslash continuations joined), so the
Tour cannot drift from the code. Each command runs through the installed `omop-behrt` script (or
`python -m omop_behrt` when the script is not beside this interpreter) and must exit 0; the results are then
checked: the cohort, the censored events, the model, the embedding table, the report and its shareability.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

README = Path(__file__).parent.parent / "README.md"


def tour_commands(text: str) -> list[str]:
    """The commands of the first ```bash block after the '## Tour' heading."""
    section = text[text.index("\n## Tour\n"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines, current = [], ""
    for line in block.splitlines():
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            lines.append(re.sub(r"\s+#.*$", "", current).strip())
        current = ""
    return lines


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "omop-behrt", f"a Tour line that is not an omop-behrt command: {command}"
    script = Path(sys.executable).parent / "omop-behrt"
    return ([str(script)] if script.exists() else [sys.executable, "-m", "omop_behrt"]) + words[1:]


def test_the_tour_parses_into_the_whole_pipeline():
    cmds = tour_commands(README.read_text())
    firsts = [shlex.split(c)[1] for c in cmds]
    for step in ("demo-cdm", "cohort", "task", "extract", "vocab", "pretrain", "embed", "evaluate",
                 "check-shareable", "to-meds", "from-meds"):
        assert step in firsts, f"the Tour lost its {step} step"
    assert firsts.index("task") < firsts.index("extract") < firsts.index("pretrain"), "leak-free order"
    assert any("--index-dates task/labels.parquet" in c for c in cmds if " extract " in f" {c} ")


@pytest.mark.slow
def test_the_readme_tour_runs_verbatim(tmp_path):
    seconds = []
    for cmd in tour_commands(README.read_text()):
        t = time.perf_counter()
        r = subprocess.run(_argv(cmd), cwd=tmp_path, capture_output=True, text=True, timeout=900)
        seconds.append((cmd, time.perf_counter() - t))
        assert r.returncode == 0, f"`{cmd}` exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        assert "Traceback" not in r.stderr, f"`{cmd}` printed a traceback:\n{r.stderr[-4000:]}"
        if cmd.split()[1] == "evaluate":
            assert "leakage" not in r.stdout + r.stderr, "the Tour's order is leak-free: no warning expected"
            assert "AUROC" in r.stdout
        if cmd.split()[1] == "check-shareable":
            assert r.stdout.startswith("shareable:"), r.stdout
    print("\n".join(f"{s:7.1f} s  {c}" for c, s in seconds))
    # what the Tour made
    con = duckdb.connect(str(tmp_path / "cdm.duckdb"), read_only=True)
    n_cohort = con.execute("SELECT count(*) FROM results.cohort WHERE cohort_definition_id = 1").fetchone()[0]
    con.close()
    assert n_cohort > 2_000                              # Eunomia: almost everyone takes an NSAID
    manifest = json.loads((tmp_path / "events" / "manifest.json").read_text())
    assert manifest["fingerprint"]["index_dates"].endswith(tuple("0123456789abcdef"))
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["training_data"]["censored_at"] == manifest["fingerprint"]["index_dates"]
    con = duckdb.connect(str(tmp_path / "embeddings.duckdb"), read_only=True)
    rows, dims = con.execute("SELECT count(*), max(len(embedding)) FROM results.patient_embedding").fetchone()
    con.close()
    assert 0 < rows <= n_cohort and dims == json.loads((tmp_path / "model" / "config.json").read_text())["hidden"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Gastrointestinal hemorrhage" in html
    assert (tmp_path / "meds" / "metadata" / "dataset.json").exists()
    from omop_behrt.events import EventDir
    assert EventDir.open(tmp_path / "events2").events().count_rows() == \
        EventDir.open(tmp_path / "events").events().count_rows()

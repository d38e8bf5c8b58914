"""`embed --resume` continues only the run it started: a fingerprint of every input, refused when one differs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from omop_behrt.vectors import embed as embed_module
from omop_behrt.cli.main import main
from omop_behrt.tasks.cohorts import index_dates_from_frame
from omop_behrt.vectors.embed import embed_cohort, model_checksum
from omop_behrt.vectors.embed_run import RUN_FILE
from omop_behrt.behrt.model import Behrt, model_id


@pytest.fixture(scope="module")
def subjects(eunomia_events) -> np.ndarray:
    return np.sort(eunomia_events.persons()["subject_id"].to_numpy())[:300]


def _index(subjects: np.ndarray, date: str) -> pa.Table:
    dates = pd.to_datetime([date] * len(subjects))
    return index_dates_from_frame(pd.DataFrame({"subject_id": subjects, "index_date": dates}))


@pytest.fixture(scope="module")
def clean_2019(tiny_model, eunomia_events, subjects):
    """The reference: one uninterrupted run with 2019 index dates, 3 chunks of 100 persons."""
    return embed_cohort(tiny_model, eunomia_events, _index(subjects, "2019-01-01"), chunk_persons=100,
                        device="cpu", progress=False)


def _counting(monkeypatch, fail_on: int | None = None) -> dict:
    """Count calls of the per-chunk encoder; raise KeyboardInterrupt (Ctrl-C) on call ``fail_on``."""
    real, calls = embed_module.embed_sequences, {"n": 0}

    def wrapped(*a, **kw):
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(embed_module, "embed_sequences", wrapped)
    return calls


def test_resume_with_new_index_dates_is_refused(tiny_model, eunomia_events, subjects, clean_2019, tmp_path):
    """Issue case: resuming with 1990 index dates reused the 2019 vectors (future data in the vector)."""
    work = tmp_path / "work"
    embed_cohort(tiny_model, eunomia_events, _index(subjects, "2019-01-01"), chunk_persons=100, device="cpu",
                 progress=False, work_dir=work)
    with pytest.raises(ValueError, match=r"inputs differ \(index_sha256: was '[0-9a-f]{64}', now '[0-9a-f]{64}'\)"):
        embed_cohort(tiny_model, eunomia_events, _index(subjects, "1990-01-01"), chunk_persons=100, device="cpu",
                     progress=False, work_dir=work, resume=True)
    # a fresh run in the same work dir is computed for its own dates, not read from the old chunks
    fresh = embed_cohort(tiny_model, eunomia_events, _index(subjects, "1990-01-01"), chunk_persons=100,
                         device="cpu", progress=False, work_dir=work)
    alone = embed_cohort(tiny_model, eunomia_events, _index(subjects, "1990-01-01"), chunk_persons=100,
                         device="cpu", progress=False)
    assert np.array_equal(fresh.vectors, alone.vectors)
    assert not np.allclose(fresh.vectors, clean_2019.vectors)
    saved = json.loads((work / RUN_FILE).read_text())
    assert saved["index_rows"] == 300 and saved["pooling"] == "cls" and saved["precision"] == "fp32"


@pytest.mark.parametrize("change, expect", [
    ({"pooling": "mean"}, "pooling: was 'cls', now 'mean'"),
    ({"inclusive": True}, "inclusive: was False, now True"),
    ({"chunk_persons": 50}, "chunk_persons: was 100, now 50"),
    ({"precision": "bf16"}, "precision: was 'fp32', now 'bf16'"),
    ({"batch_tokens": 2048}, "batch_tokens: was 4096, now 2048"),   # fixed batch shapes (CPU: <= 4096 tokens)
    ({"shard": "0/1"}, "shard: was None, now '0/1'"),
])
def test_resume_refuses_other_settings(tiny_model, eunomia_events, subjects, tmp_path, change, expect):
    work = tmp_path / "work"
    ix = _index(subjects[:20], "2019-01-01")
    embed_cohort(tiny_model, eunomia_events, ix, chunk_persons=100, device="cpu", progress=False, work_dir=work)
    args = dict(chunk_persons=100, device="cpu", progress=False, work_dir=work, resume=True)
    with pytest.raises(ValueError, match=expect.replace("(", r"\(")):
        embed_cohort(tiny_model, eunomia_events, ix, **{**args, **change})


def test_resume_refuses_other_model_and_changed_source(tiny_model, eunomia_events, subjects, tmp_path):
    ix = _index(subjects[:20], "2019-01-01")
    # another model: same config and tokens, weights moved a little
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model, other)
    m = Behrt.load(other)
    with torch.no_grad():
        next(m.parameters()).add_(0.01)
    m.save(other)
    work = tmp_path / "work"
    first = embed_cohort(tiny_model, eunomia_events, ix, device="cpu", progress=False, work_dir=work)
    with pytest.raises(ValueError, match="model_id: was '[0-9a-f]+', now '[0-9a-f]+'"):
        embed_cohort(other, eunomia_events, ix, device="cpu", progress=False, work_dir=work, resume=True)
    # the id the registry gets (its first 16 hex digits are the exported model_id) is the model's own id
    assert first.provenance["model_checksum"] == model_checksum(tiny_model) == model_id(tiny_model)
    assert model_checksum(other)[:16] != model_checksum(tiny_model)[:16]
    # the same event directory re-extracted (its manifest changed): another source
    events = tmp_path / "events"
    shutil.copytree(eunomia_events.path, events)
    work2 = tmp_path / "work2"
    embed_cohort(tiny_model, events, ix, device="cpu", progress=False, work_dir=work2)
    manifest = json.loads((events / "manifest.json").read_text())
    manifest["re-extracted"] = True
    (events / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"source: was 'event directory .* manifest sha256 [0-9a-f]{16}'"):
        embed_cohort(tiny_model, events, ix, device="cpu", progress=False, work_dir=work2, resume=True)


def test_resume_without_a_run_to_continue(tiny_model, eunomia_events, subjects, tmp_path):
    ix = _index(subjects[:5], "2019-01-01")
    with pytest.raises(ValueError, match=r"resume needs the work directory .*--work-dir"):
        embed_cohort(tiny_model, eunomia_events, ix, device="cpu", progress=False, resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"cannot resume: work directory .*empty is empty"):
        embed_cohort(tiny_model, eunomia_events, ix, device="cpu", progress=False, resume=True,
                     work_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match=r"cannot resume: work directory .*missing is empty"):
        embed_cohort(tiny_model, eunomia_events, ix, device="cpu", progress=False, resume=True,
                     work_dir=tmp_path / "missing")
    # a fresh run never clears a folder that is not its own (here: the event directory itself)
    events = tmp_path / "events"
    shutil.copytree(eunomia_events.path, events)
    with pytest.raises(ValueError, match="holds files that are not an embedding run's .*manifest.json"):
        embed_cohort(tiny_model, events, ix, device="cpu", progress=False, work_dir=events)
    assert (events / "events").is_dir() and (events / "persons.parquet").exists()
    assert not (events / ".embed.lock").exists()


def test_one_run_per_work_directory(tiny_model, eunomia_events, subjects, tmp_path):
    """Two runs sharing a --work-dir would overwrite each other's chunks: the second is refused at once."""
    from omop_behrt.vectors.export import exclusive_lock
    work = tmp_path / "work"
    work.mkdir()
    ix = _index(subjects[:5], "2019-01-01")
    with exclusive_lock(work / ".embed.lock"):          # what a running `embed --work-dir work` holds
        with pytest.raises(OSError, match=r"work directory .*work is in use by another embedding run"):
            embed_cohort(tiny_model, eunomia_events, ix, device="cpu", progress=False, work_dir=work)
    assert embed_cohort(tiny_model, eunomia_events, ix, device="cpu", progress=False, work_dir=work
                        ).has_history.all()


def test_interrupted_run_resumes_to_the_clean_result(tiny_model, eunomia_events, subjects, clean_2019, tmp_path,
                                                      monkeypatch):
    """Ctrl-C in the second chunk: the first chunk stays; the resume computes only chunks 2 and 3."""
    work = tmp_path / "work"
    ix = _index(subjects, "2019-01-01")
    calls = _counting(monkeypatch, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        embed_cohort(tiny_model, eunomia_events, ix, chunk_persons=100, device="cpu", progress=False, work_dir=work)
    assert calls["n"] == 2 and sorted(p.name for p in (work / "chunks").iterdir()) == ["chunk-00000.npz"]
    calls = _counting(monkeypatch)
    res = embed_cohort(tiny_model, eunomia_events, ix, chunk_persons=100, device="cpu", progress=False,
                       work_dir=work, resume=True)
    assert calls["n"] == 2
    assert np.array_equal(res.vectors, clean_2019.vectors)
    assert np.array_equal(res.has_history, clean_2019.has_history)


def test_cli_interrupt_then_resume(tiny_model, eunomia_events, subjects, clean_2019, tmp_path, monkeypatch, capsys):
    """The command line: Ctrl-C is exit 130 with a hint; --resume then writes the clean run's table."""
    pd.DataFrame({"subject_id": subjects, "index_date": "2019-01-01"}).to_csv(tmp_path / "ix.csv", index=False)
    base = ["embed", "--model", str(tiny_model), "--source", str(eunomia_events.path), "--cohort",
            str(tmp_path / "ix.csv"), "--out", str(tmp_path / "out"), "--chunk-persons", "100", "--device", "cpu",
            "--quiet"]
    assert main(base + ["--resume"]) == 2
    assert "resume needs the work directory" in capsys.readouterr().err
    _counting(monkeypatch, fail_on=3)
    assert main(base + ["--work-dir", str(tmp_path / "w")]) == 130
    assert "interrupted; run again with --resume" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    calls = _counting(monkeypatch)
    assert main(base + ["--work-dir", str(tmp_path / "w"), "--resume"]) == 0
    assert calls["n"] == 1
    t = pq.read_table(tmp_path / "out" / "patient_embedding.parquet")
    keep = clean_2019.has_history
    assert t.num_rows == keep.sum()
    assert np.array_equal(np.stack(t["embedding"].to_numpy(zero_copy_only=False)), clean_2019.vectors[keep])
    assert main(base + ["--work-dir", str(tmp_path / "w"), "--resume", "--pooling", "mean"]) == 2
    assert "pooling: was 'cls', now 'mean'" in capsys.readouterr().err


def test_interrupted_token_mapping_is_redone(tiny_model, eunomia_events, subjects, clean_2019, tmp_path, monkeypatch):
    """Ctrl-C while the tokens were being written (half the shard rows there): the resume maps them again."""
    import omop_behrt.vocab.mapping as vocab_module
    real = vocab_module.map_events

    def half_then_interrupt(*a, out=None, **kw):
        real(*a, out=out, **kw)
        for shard in (out / "tokens").glob("part-*.parquet"):
            t = pq.read_table(shard)
            pq.write_table(t.slice(0, t.num_rows // 2), shard)
        raise KeyboardInterrupt

    monkeypatch.setattr(vocab_module, "map_events", half_then_interrupt)
    work = tmp_path / "work"
    ix = _index(subjects, "2019-01-01")
    with pytest.raises(KeyboardInterrupt):
        embed_cohort(tiny_model, eunomia_events, ix, chunk_persons=100, device="cpu", progress=False, work_dir=work)
    monkeypatch.undo()
    res = embed_cohort(tiny_model, eunomia_events, ix, chunk_persons=100, device="cpu", progress=False,
                       work_dir=work, resume=True)
    assert (work / "tokens" / "complete").exists()
    assert np.array_equal(res.vectors, clean_2019.vectors)


def test_sigint_in_a_real_process_then_resume(tiny_model, eunomia_events, subjects, clean_2019, tmp_path):
    """A real Ctrl-C (SIGINT) to `python -m omop_behrt embed`: one line, exit 130, finished chunks kept; the
    resume computes the rest and the table equals the clean run's."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    pd.DataFrame({"subject_id": subjects, "index_date": "2019-01-01"}).to_csv(tmp_path / "ix.csv", index=False)
    cmd = [sys.executable, "-m", "omop_behrt", "embed", "--model", str(tiny_model), "--source",
           str(eunomia_events.path), "--cohort", str(tmp_path / "ix.csv"), "--out", str(tmp_path / "out.duckdb"),
           "--chunk-persons", "100", "--device", "cpu", "--quiet", "--work-dir", str(tmp_path / "w")]
    env = dict(os.environ, PYTHONPATH=str(root))
    import torch
    # the child computes chunk 0 with this process's thread count: a CPU forward's last bits depend on it, and an
    # earlier test may have set it (pretrain --threads)
    slow = (f"import torch; torch.set_num_threads({torch.get_num_threads()})\n"
            "import time, omop_behrt.vectors.embed as e; real = e.embed_sequences\n"
            "def slow(*a, **k):\n    time.sleep(0.5); return real(*a, **k)\n"
            "e.embed_sequences = slow\n"
            "import sys, omop_behrt.cli.main as c; c.run(sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", slow] + cmd[3:], env=env, cwd=root, stderr=subprocess.PIPE,
                            text=True)
    first = tmp_path / "w" / "chunks" / "chunk-00000.npz"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "omop-behrt embed: interrupted; run again with --resume to continue"
    assert "Traceback" not in err
    done = sorted(p.name for p in (tmp_path / "w" / "chunks").glob("chunk-*.npz"))
    assert done and len(done) < 3 and not (tmp_path / "out.duckdb").exists()
    assert main(cmd[3:] + ["--resume"]) == 0     # the resume in this process: no second interpreter start
    import duckdb
    con = duckdb.connect(str(tmp_path / "out.duckdb"), read_only=True)
    got = con.execute("SELECT embedding FROM results.patient_embedding ORDER BY subject_id").fetchall()
    con.close()
    keep = clean_2019.has_history
    order = np.argsort(subjects[keep])
    assert np.array_equal(np.array([g[0] for g in got], dtype=np.float32), clean_2019.vectors[keep][order])

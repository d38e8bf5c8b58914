"""Model directory and pretraining under faults: integrity (model id), privacy (nothing per person in the model
directory), resume (refused without a checkpoint or for another run; exact after Ctrl-C), writability."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from omop_behrt.behrt.checkpoint import CHECKPOINT, ResumeError, work_dir_lock
from omop_behrt.cli.main import main
from omop_behrt.behrt.model import Behrt, BehrtConfig, ModelIntegrityError, ModelIntegrityWarning, model_id
from omop_behrt.behrt.pretrain import pretrain
from omop_behrt.behrt.tokenizer import SPECIALS, Sequences, TokenVocabulary

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
MICRO = dict(hidden=16, layers=1, heads=2, intermediate=32, max_len=32)      # a step takes ~10 ms on one core
TINY = dict(vocab="source", config=BehrtConfig.preset("tiny", **MICRO), progress=False, threads=1, batch_tokens=256,
            seed=0)


def micro_config(tmp_path: Path) -> str:
    """The MICRO shape as a config.json, for the CLI."""
    (tmp_path / "micro.json").write_text(json.dumps(MICRO))
    return str(tmp_path / "micro.json")


@pytest.fixture(scope="module")
def events(eunomia_events, tmp_path_factory) -> Path:
    """Eunomia cut to its first 500 persons (a small, real event directory: a tiny run takes a second)."""
    out = tmp_path_factory.mktemp("small_events")
    persons = eunomia_events.persons()
    keep = pc.sort_indices(persons, [("subject_id", "ascending")])[:500]
    persons = persons.take(keep)
    ids = persons.column("subject_id")
    (out / "events").mkdir()
    ev = eunomia_events.read_events()
    pq.write_table(ev.filter(pc.is_in(ev.column("subject_id"), ids)), out / "events" / "part-00000.parquet")
    pq.write_table(persons, out / "persons.parquet")
    shutil.copy(eunomia_events.path / "manifest.json", out / "manifest.json")
    return out


@pytest.fixture(scope="module")
def model(events, tmp_path_factory) -> tuple[Path, dict]:
    """A finished tiny pretraining run (max_steps below --checkpoint-every)."""
    out = tmp_path_factory.mktemp("run") / "model"
    res = pretrain(events, out=out, max_steps=6, checkpoint_every=500, **TINY)
    return out, res


def copy_model(model, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(model[0], dst)
    return dst


# -- 1. integrity -----------------------------------------------------------------------------------
def test_model_id_covers_config_tokens_and_weights_and_is_canonical(model, tmp_path):
    out, res = model
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_id"] == res["model_id"] == model_id(out) and len(meta["model_id"]) == 64
    d = copy_model(model, tmp_path)
    for name in ("config.json", "tokens.json"):                  # same content, other layout: same id, loads
        obj = json.loads((d / name).read_text())
        (d / name).write_text(json.dumps(dict(reversed(list(obj.items()))), indent=7))
    assert model_id(d) == meta["model_id"]
    Behrt.load(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"dropout": 0.2}))
    assert model_id(d) != meta["model_id"]


@pytest.mark.parametrize("edit, file", [("swap_tokens", "tokens.json"), ("config", "config.json"),
                                        ("weights", "model.safetensors"), ("metadata", "metadata.json")])
def test_changed_file_fails_to_load_naming_it(model, tmp_path, edit, file):
    d = copy_model(model, tmp_path)
    if edit == "swap_tokens":                                    # two ids swapped: loads silently before
        tok = json.loads((d / "tokens.json").read_text())
        a, b = list(tok["tokens"])[5:7]
        tok["tokens"][a]["id"], tok["tokens"][b]["id"] = tok["tokens"][b]["id"], tok["tokens"][a]["id"]
        (d / "tokens.json").write_text(json.dumps(tok))
    elif edit == "config":
        (d / "config.json").write_text(json.dumps(json.loads((d / "config.json").read_text()) | {"use_age": False}))
    elif edit == "weights":
        raw = bytearray((d / "model.safetensors").read_bytes())
        raw[-3] ^= 0xFF
        (d / "model.safetensors").write_bytes(bytes(raw))
    else:
        meta = json.loads((d / "metadata.json").read_text())
        (d / "metadata.json").write_text(json.dumps(meta | {"vocab": "caliber"}))
    with pytest.raises(ModelIntegrityError) as e:
        Behrt.load(d)
    assert isinstance(e.value, ValueError)
    assert str(e.value) == (f"{d}: {file} was changed after the model was saved (model id mismatch); "
                            "use the directory as saved, or retrain")


def old_style(model, tmp_path) -> Path:
    """A model directory as versions before model ids wrote it (no model_id / model_files in metadata)."""
    d = copy_model(model, tmp_path)
    meta = json.loads((d / "metadata.json").read_text())
    meta = {k: v for k, v in meta.items() if k not in ("model_id", "model_files")}
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


def test_old_directory_loads_with_a_warning_and_resaving_records_the_id(model, tmp_path):
    d = old_style(model, tmp_path)
    with pytest.warns(ModelIntegrityWarning, match="no model id recorded"):
        m = Behrt.load(d)
    assert model_id(d) == model[1]["model_id"]                  # the id is computed from the files
    m.save(d)
    assert json.loads((d / "metadata.json").read_text())["model_id"] == model[1]["model_id"]


def test_size_mismatch_is_one_clear_error(model, tmp_path):
    d = old_style(model, tmp_path)                               # unverified, so only the size check can catch it
    tok = json.loads((d / "tokens.json").read_text())
    last = max(tok["tokens"], key=lambda t: tok["tokens"][t]["id"])
    del tok["tokens"][last]
    (d / "tokens.json").write_text(json.dumps(tok))
    meta = json.loads((d / "metadata.json").read_text())
    meta["vocab_sha256"] = TokenVocabulary.load(d).sha256
    (d / "metadata.json").write_text(json.dumps(meta))
    V = meta["vocab_size"]
    with pytest.warns(ModelIntegrityWarning), pytest.raises(ModelIntegrityError) as e:
        Behrt.load(d)
    assert str(e.value) == (f"{d}: sizes do not agree: config.json vocab_size {V}, tokens.json {V - 1} tokens, "
                            f"model.safetensors {V} code-embedding rows")
    d = old_style(model, tmp_path / "b")
    (d / "config.json").write_text(json.dumps(json.loads((d / "config.json").read_text()) | {"intermediate": 96}))
    with pytest.warns(ModelIntegrityWarning), pytest.raises(ModelIntegrityError,
                                                            match=r"config.json does not match model.safetensors: "
                                                                  r"blocks.0.mlp.0.weight is \[32, 16\] in the "
                                                                  r"weights but \[96, 16\] by config.json"):
        Behrt.load(d)


def test_rare_counts_in_tokens_json_are_refused(model, tmp_path):
    d = copy_model(model, tmp_path)
    tok = json.loads((d / "tokens.json").read_text())
    tok["tokens"][list(tok["tokens"])[6]]["persons"] = 2
    (d / "tokens.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="1 tokens have a person count below min_count 10"):
        TokenVocabulary.load(d)


# -- 2. privacy -------------------------------------------------------------------------------------
def test_model_directory_holds_nothing_per_person(model, events):
    out, res = model
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metadata.json", "metrics.json",
                                                      "model.safetensors", "tokens.json"]
    work = out.parent / "model.work"
    assert res["work_dir"] == str(work) and (work / CHECKPOINT).exists()
    train = Sequences.load(work / "data" / "train")                  # the per-person caches are here instead
    val = Sequences.load(work / "data" / "val")
    assert len(train) + len(val) == 500
    meta_text = (out / "metadata.json").read_text()
    meta = json.loads(meta_text)
    dates = re.findall(r"\d{4}-\d\d-\d\d", meta_text)
    assert dates == [meta["created_at"][:10]]                         # no event date, only years
    assert isinstance(meta["training_data"]["first_year"], int)
    assert not any("subject" in k or "person_id" in k for k in json.dumps(meta).split('"'))
    rows = json.loads((out / "metrics.json").read_text())
    keys = set().union(*rows)
    assert keys <= {"step", "epoch", "lr", "loss", "masked_acc", "top10_acc", "precision", "tokens_per_s",
                    "padding", "plos_loss", "val_loss", "val_acc", "val_top10", "val_masked"}
    from omop_behrt.shareable import check_shareable
    assert check_shareable(out) == []                                 # and `omop-behrt check-shareable` agrees
    assert any("per-person arrays" in f.what for f in check_shareable(work))


def test_tokens_json_holds_person_counts_of_training_persons_at_least_min_count(model, events):
    out, _ = model
    tok = json.loads((out / "tokens.json").read_text())
    assert [t for t, v in tok["tokens"].items() if v["id"] < 5] == list(SPECIALS)
    assert all(tok["tokens"][s]["persons"] == 0 for s in SPECIALS)
    from omop_behrt.vocab.mapping import map_events
    train_ids = Sequences.load(out.parent / "model.work" / "data" / "train").subject_id
    tokens = map_events(events, vocab="source", progress=False).tokens
    con = duckdb.connect()
    con.register("t", tokens.select(["subject_id", "token"]))
    con.register("train", pa.table({"subject_id": train_ids}))
    counts = dict(con.execute("SELECT token, count(DISTINCT subject_id) FROM t SEMI JOIN train USING (subject_id) "
                              "GROUP BY token HAVING count(DISTINCT subject_id) >= 10").fetchall())
    kept = {t: v["persons"] for t, v in tok["tokens"].items() if t not in SPECIALS}
    assert kept == counts and min(kept.values()) >= 10 == tok["min_count"]
    assert tok["persons"] == len(train_ids)


def test_work_dir_inside_the_model_directory_is_refused(events, tmp_path):
    with pytest.raises(ValueError, match="is inside the model directory"):
        pretrain(events, out=tmp_path / "m", work_dir=tmp_path / "m" / "cache", max_steps=2, **TINY)
    assert not (tmp_path / "m" / "cache").exists()


# -- 3. resume --------------------------------------------------------------------------------------
def test_resume_without_a_checkpoint_is_refused(events, tmp_path):
    with pytest.raises(ResumeError) as e:
        pretrain(events, out=tmp_path / "m", resume=True, max_steps=4, **TINY)
    assert str(e.value) == f"--resume: no checkpoint in {tmp_path / 'm.work'}; run without --resume to start"
    assert not (tmp_path / "m.work" / "data").exists() and not (tmp_path / "m" / "model.safetensors").exists()
    rc = main(["pretrain", "--events", str(events), "--out", str(tmp_path / "c"), "--resume", "--quiet",
               "--config", micro_config(tmp_path)])
    assert rc == 2


def test_resume_of_another_run_is_refused_and_a_copied_event_dir_resumes(events, tmp_path):
    kw = dict(TINY, max_steps=8, checkpoint_every=500)
    first = pretrain(events, out=tmp_path / "m", stop_after=3, **kw)
    assert not first["finished"] and (tmp_path / "m.work" / CHECKPOINT).exists()   # 3 < --checkpoint-every
    for change, said in ((dict(seed=1), "seed: 0 in the checkpoint, 1 now"),
                         (dict(lr=1e-3), "lr: 0.0005 in the checkpoint, 0.001 now"),
                         (dict(max_steps=9), "max_steps: 8 in the checkpoint, 9 now"),
                         (dict(min_count=11), "min_count: 10 in the checkpoint, 11 now"),
                         (dict(sex=True), "config.extras: {} in the checkpoint, {'sex': 3} now")):
        with pytest.raises(ResumeError, match=re.escape("belongs to another run; " + said)):
            pretrain(events, out=tmp_path / "m", resume=True, **{**kw, **change})
    changed = tmp_path / "ev2"
    shutil.copytree(events, changed)
    t = pq.read_table(changed / "events" / "part-00000.parquet")
    pq.write_table(t.slice(1), changed / "events" / "part-00000.parquet")
    with pytest.raises(ResumeError, match="events: the event directory's content changed"):
        pretrain(changed, out=tmp_path / "m", resume=True, **kw)
    same = tmp_path / "ev3"
    shutil.copytree(events, same)                                 # a copy: new mtimes, same content
    res = pretrain(same, out=tmp_path / "m", resume=True, **kw)
    assert res["finished"] and res["step"] == 8
    ref = pretrain(events, out=tmp_path / "ref", **kw)
    assert res["model_id"] == ref["model_id"]                    # and the resumed model is the uninterrupted one


def test_second_run_on_the_same_work_dir_is_refused(events, tmp_path):
    (tmp_path / "m.work").mkdir()
    with work_dir_lock(tmp_path / "m.work"):
        with pytest.raises(BlockingIOError, match="another pretraining run is using this work directory"):
            pretrain(events, out=tmp_path / "m", max_steps=2, **TINY)


# -- 4 & 5. checkpoints every epoch and on Ctrl-C; resume is exact ---------------------------------
def test_ctrl_c_checkpoints_and_resume_equals_uninterrupted(events, tmp_path):
    args = ["--events", str(events), "--vocab", "source", "--config", micro_config(tmp_path), "--max-steps", "200",
            "--batch-tokens", "256", "--threads", "1", "--quiet"]
    out, work = tmp_path / "m", tmp_path / "m.work"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "omop_behrt.cli.main", "pretrain", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (work / CHECKPOINT).exists():                        # the first epoch's end (56 steps < 500)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("interrupted; run again with --resume to continue")
    step = int(err.split("interrupted at step ")[1].split("/")[0])
    assert f"checkpoint at step {step} in {work}" in err and 56 <= step < 200
    assert not (out / "model.safetensors").exists()
    rc = main(["pretrain", "--out", str(out), "--resume", *args])
    assert rc == 0
    ref = pretrain(events, out=tmp_path / "ref", max_steps=200, **TINY)
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    assert model_id(out) == ref["model_id"]
    rows = json.loads((out / "metrics.json").read_text())
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(10, 201, 10)) and "val_loss" in rows[-1]   # rows after the checkpoint not doubled


# -- 6. writability ---------------------------------------------------------------------------------
def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (sysfs when running as root, else a 0o500 folder)."""
    if os.geteuid() == 0:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without sysfs: no unwritable directory to try")
        return Path("/sys/kernel/omop_behrt_test")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    return ro / "sub"


@pytest.mark.parametrize("which", ["--out", "--work-dir"])
def test_unwritable_out_or_work_dir_fails_before_tokenising(events, tmp_path, capsys, which):
    bad = unwritable_dir(tmp_path)
    out, work = (bad, tmp_path / "w") if which == "--out" else (tmp_path / "m", bad)
    t0 = time.perf_counter()
    rc = main(["pretrain", "--events", str(events), "--out", str(out), "--work-dir", str(work), "--quiet",
               "--max-steps", "2", "--config", micro_config(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"omop-behrt pretrain: error: {which} is not writable (")
    assert err[-1].endswith(f": {bad}") and time.perf_counter() - t0 < 2
    assert not (tmp_path / "w" / "data").exists() and not (tmp_path / "m" / "model.safetensors").exists()
    f = tmp_path / "a_file"
    f.write_text("")
    with pytest.raises(NotADirectoryError, match="--out must be a folder, not a file"):
        pretrain(events, out=f, max_steps=2, **TINY)


def test_config_round_trip_through_the_cli_prints_the_work_dir(events, tmp_path, capsys):
    rc = main(["pretrain", "--events", str(events), "--out", str(tmp_path / "m"), "--work-dir",
               str(tmp_path / "elsewhere"), "--max-steps", "2", "--batch-tokens", "256", "--quiet",
               "--config", micro_config(tmp_path),
               "--threads", "1"])
    cap = capsys.readouterr()
    assert rc == 0 and f"work directory (tokenised sequences and checkpoint; per person, keep it on site): " \
                       f"{tmp_path / 'elsewhere'}" in cap.err
    assert (tmp_path / "elsewhere" / "data" / "train").is_dir() and not (tmp_path / "m.work").exists()
    assert Behrt.load(tmp_path / "m").config == BehrtConfig.from_dict(
        json.loads((tmp_path / "m" / "config.json").read_text()))

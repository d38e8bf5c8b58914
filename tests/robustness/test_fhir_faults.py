"""FHIR adapter on messy and hostile input: repeated resources, broken streams, stray files, non-FHIR JSON, and
worker processes when the run is killed or interrupted.

Every case asserts resources in = out + quarantined, with the quarantine rows where the summary says they are.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from omop_behrt.adapters import fhir
from omop_behrt.cli.main import main
from omop_behrt.events import EventDir

DATA = Path(__file__).parents[1] / "data" / "fhir"
BUNDLES, NDJSON = DATA / "bundles", DATA / "ndjson"
COPIES = 4
UUID = re.compile(rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def _lines(name: str) -> list[bytes]:
    """The lines of one fixture NDJSON file (tests/data/fhir/ndjson/<name>.000.ndjson.gz)."""
    return gzip.decompress((NDJSON / f"{name}.000.ndjson.gz").read_bytes()).splitlines()


def _bundle_resources(i: int = 0) -> list[dict]:
    """One Synthea Bundle's resources, urn:uuid references rewritten as Type/id (as in bulk NDJSON)."""
    doc = json.loads(gzip.decompress(sorted(BUNDLES.glob("*.json.gz"))[i].read_bytes()))
    urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in doc["entry"]}

    def fix(x):
        if isinstance(x, dict):
            return {k: (urls[v] if k == "reference" and v in urls else fix(v)) for k, v in x.items()}
        return [fix(v) for v in x] if isinstance(x, list) else x
    return [fix(e["resource"]) for e in doc["entry"]]


def _write(path: Path, resources: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))


def _sorted_table(d: EventDir):
    t = d.read_events()
    keys = [(c, "ascending") for c in ("subject_id", "time", "code", "visit_id", "numeric_value", "domain")]
    return t.take(pc.sort_indices(t, keys))


def _sorted_events(d: EventDir) -> list[dict]:
    return _sorted_table(d).to_pylist()


def _balanced(s) -> None:
    assert s.resources_in == s.resources_out + s.quarantined


# -- 1. repeated resources (same type and id), in one file and across files and parts ----------------------
@pytest.fixture(scope="module")
def duplicates(tmp_path_factory):
    """``truth``: each resource once, in the version that must win; ``messy``: the same plus stale copies."""
    root = tmp_path_factory.mktemp("fhir_dups")
    res = _bundle_resources(0)
    by_type: dict[str, list[dict]] = {}
    for r in res:
        by_type.setdefault(r["resourceType"], []).append(r)
    patient = by_type["Patient"][0]
    pid = patient["id"]
    panel = next(r for r in by_type["Observation"] if len(r.get("component", [])) >= 2)
    cond = by_type["Condition"][:3]
    enc = by_type["Encounter"][0]
    newer_patient = {**patient, "gender": "female" if patient.get("gender") == "male" else "male",
                     "meta": {"lastUpdated": "2030-01-01T00:00:00+02:00"}}
    newer_cond = {**cond[1], "code": {"coding": [{"system": "http://snomed.info/sct", "code": "111111"}]},
                  "meta": {"lastUpdated": "2029-12-31T23:00:00Z"}}
    older_cond = {**cond[1], "meta": {"lastUpdated": "2029-12-31T23:30:00+02:00"}}   # 21:30Z: older, as an instant
    bad_newest = {**cond[2], "onsetDateTime": "2021-02-30", "meta": {"lastUpdated": "2031-01-01"}}
    bad_stale = {**cond[0], "onsetDateTime": "2021-13-01"}
    no_id = {k: v for k, v in cond[0].items() if k != "id"}
    group = {**cond[0], "id": "grp", "subject": {"reference": "Group/g1"}}
    # the Patient of a second person only in a single-resource JSON file, read in its own part: the
    # Conditions that point at it are pending when their part ends, and one of them is repeated
    other = {"resourceType": "Patient", "id": "late-patient", "birthDate": "1960-05-05", "gender": "female"}
    late_cond = {**cond[0], "id": "late-cond", "subject": {"reference": "Patient/late-patient"}}
    late_cond.pop("encounter", None)

    rest = {t: rs for t, rs in by_type.items() if t not in ("Patient",)}
    truth, messy = root / "truth", root / "messy"
    for folder in (truth, messy):
        _write(folder / "Patient.ndjson", [newer_patient])
        for t, rs in rest.items():
            keep = [newer_cond if r is cond[1] else bad_newest if r is cond[2] else r for r in rs]
            _write(folder / f"{t}.ndjson", keep + ([no_id, group, late_cond] if t == "Condition" else []))
        (folder / "zz_late.json").write_text(json.dumps(other))
    # stale copies: within a file (Encounter, the panel) and across files/parts (Patient, Conditions)
    with open(messy / "Encounter.ndjson", "a") as f:
        f.write(json.dumps(enc) + "\n")
    with open(messy / "Observation.ndjson", "a") as f:
        f.write(json.dumps(panel) + "\n")
    _write(messy / "Patient.old.ndjson", [patient])
    _write(messy / "later" / "Condition.copy.ndjson", [older_cond, cond[2], bad_stale, cond[0], late_cond])
    stale = {"Encounter": 1, "Observation": 1, "Patient": 1, "Condition": 5}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fhir, "_PART_BYTES", 1)                # every file its own part, 2 workers
        st = fhir.extract(truth, root / "t_out", progress=False, workers=2)
        sm = fhir.extract(messy, root / "m_out", progress=False, workers=2)
    return st, sm, EventDir.open(root / "t_out"), EventDir.open(root / "m_out"), stale, pid, panel, root


def test_duplicates_keep_one_copy_and_quarantine_the_rest(duplicates):
    st, sm, dt_, dm, stale, pid, panel, root = duplicates
    _balanced(st)
    _balanced(sm)
    # the stale copies are read, counted in, and quarantined: nothing else changes
    assert sm.resources_in - st.resources_in == sum(stale.values()) == 8
    assert sm.resources_out == st.resources_out
    assert sm.quarantined - st.quarantined == 8
    assert _sorted_events(dm) == _sorted_events(dt_)
    assert dm.persons().to_pylist() == dt_.persons().to_pylist()
    assert sm.events_out == st.events_out and sm.persons == st.persons == 2
    # bad_stale keeps its own reason; the other 7 stale copies are quarantined as duplicates
    assert sm.duplicates_by_type == {"Encounter": 1, "Observation": 1, "Patient": 1, "Condition": 4}
    assert st.duplicates_by_type == {}
    assert {k: v for k, v in sm.quarantined_by_reason.items() if k.startswith("duplicate")} == {
        "duplicate Encounter": 1, "duplicate Observation": 1, "duplicate Patient": 1, "duplicate Condition": 4}
    q = dm.quarantine().to_pylist()
    dup = [r for r in q if r["reason"].startswith("duplicate ")]
    assert len(dup) == 7 and len(q) == sm.quarantined


def test_duplicate_reasons_name_the_copy_kept(duplicates):
    _, sm, _, dm, _, pid, panel, root = duplicates
    q = {(Path(r["source"]).name, r["row"]): r["reason"] for r in dm.quarantine().to_pylist()}
    messy = root / "messy"
    # the panel repeated in the same file: the first copy is kept, the stale one names it with its line
    panel_line = next(i for i, line in enumerate((messy / "Observation.ndjson").read_text().splitlines(), 1)
                      if json.loads(line)["id"] == panel["id"])
    n_obs = len((messy / "Observation.ndjson").read_text().splitlines())
    assert q[("Observation.ndjson", str(n_obs))] == (f"duplicate Observation/{panel['id']} (kept the one in "
                                                     f"{messy / 'Observation.ndjson'} at line {panel_line})")
    # the Patient with the later meta.lastUpdated wins although it is read first; its sex is the one written
    assert q[("Patient.old.ndjson", "1")] == (f"duplicate Patient/{pid} (kept the one in "
                                              f"{messy / 'Patient.ndjson'} at line 1)")
    # lastUpdated compares as instants: 23:00Z is later than 23:30+02:00
    copy = messy / "later" / "Condition.copy.ndjson"
    assert q[(copy.name, "1")].startswith("duplicate Condition/") and "Condition.ndjson at line" in q[(copy.name,
                                                                                                          "1")]
    # the newest copy of cond[2] is bad: it is kept (and quarantined for its date), the good stale one dropped
    assert q[(copy.name, "2")].startswith("duplicate Condition/")
    assert q[(copy.name, "3")] == "impossible time '2021-13-01'"          # a stale copy with a reason of its own
    assert q[(copy.name, "4")].startswith("duplicate Condition/")
    assert q[(copy.name, "5")] == ("duplicate Condition/late-cond (kept the one in "
                                   f"{messy / 'Condition.ndjson'} at line "
                                   f"{len((messy / 'Condition.ndjson').read_text().splitlines())})")
    assert any(r.startswith("impossible time '2021-02-30'") for r in q.values())
    # a resource without an id is not deduplicated (nothing to match on); a non-Patient subject is quarantined
    assert sm.quarantined_by_reason.get("subject Group/g1 is not a Patient") == 1
    assert "duplicates    7 resources repeat a type/id" in sm.table()
    assert json.loads((dm.path / "manifest.json").read_text())["summary"]["duplicates_by_type"]["Condition"] == 4


def test_duplicate_settling_is_idempotent_on_resume(duplicates, tmp_path):
    """Re-settling (a --resume after every part finished) gives the same events and counts."""
    *_, root = duplicates
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fhir, "_PART_BYTES", 1)
        first = fhir.extract(root / "messy", tmp_path / "o", progress=False, workers=1)
        again = fhir.extract(root / "messy", tmp_path / "o", progress=False, workers=1, resume=True)
    d = EventDir.open(tmp_path / "o")
    assert (again.resources_out, again.quarantined, again.events_out, again.duplicates_by_type) == \
        (first.resources_out, first.quarantined, first.events_out, first.duplicates_by_type)
    assert _sorted_events(d) == _sorted_events(duplicates[3])
    assert d.quarantine().num_rows == again.quarantined


# -- 2. broken streams: truncated / corrupt gzip, invalid UTF-8 and invalid JSON lines -------------------------
@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("fhir_broken")
    folder = root / "src"
    folder.mkdir()
    (folder / "Patient.ndjson").write_bytes(b"\n".join(_lines("Patient")) + b"\n")
    cond = gzip.compress(b"\n".join(_lines("Condition")) + b"\n")
    cut = cond[: len(cond) // 2]
    (folder / "Condition.ndjson.gz").write_bytes(cut)
    whole_lines = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut).count(b"\n")
    imm = _lines("Immunization")
    imm[3] = imm[3].replace(b'"resourceType"', b'"resourceType\xff\xfe"')       # invalid UTF-8
    imm[7] = imm[7][:-5]                                                         # invalid JSON
    (folder / "Immunization.ndjson").write_bytes(b"\n".join(imm) + b"\n")
    allergy = bytearray(gzip.compress(b"\n".join(_lines("AllergyIntolerance")) + b"\n"))
    allergy[-8] ^= 0xFF                                                          # bad CRC in the trailer
    (folder / "AllergyIntolerance.ndjson.gz").write_bytes(bytes(allergy))
    bundle = sorted(BUNDLES.glob("*.json.gz"))[1].read_bytes()
    (folder / "bundle.json.gz").write_bytes(bundle[: len(bundle) // 2])
    out = root / "out"
    rc = main(["extract", "--source", str(folder), "--out", str(out), "--quiet", "--json", str(root / "s.json")])
    return rc, json.loads((root / "s.json").read_text()), EventDir.open(out), folder, whole_lines


def test_broken_streams_are_quarantined_with_file_and_line(broken, capsys):
    rc, s, d, folder, whole_lines = broken
    assert rc == 0
    q = {(Path(r["source"]).name, r["row"]): r["reason"] for r in d.quarantine().to_pylist()}
    assert q[("Condition.ndjson.gz", str(whole_lines + 1))] == (
        f"gzip stream truncated after line {whole_lines}: Compressed file ended before the end-of-stream marker "
        f"was reached")
    assert q[("Immunization.ndjson", "4")].startswith("malformed JSON: str is not valid UTF-8")
    assert q[("Immunization.ndjson", "8")].startswith("malformed JSON")
    assert q[("AllergyIntolerance.ndjson.gz", "12")].startswith("gzip stream corrupt after line 11: CRC check")
    assert q[("bundle.json.gz", "file")].startswith("gzip stream truncated (the Bundle cannot be read)")
    assert len(q) == s["quarantined"] == 5
    # every line read whole before the break is used: 13 Patients, whole_lines Conditions, 161 - 2 + 11
    assert s["resources_by_type"]["Condition"] == whole_lines
    assert s["events_by_domain"]["condition"] == whole_lines
    assert s["events_by_domain"]["immunization"] == 159 and s["events_by_domain"]["allergy"] == 11
    assert s["resources_in"] == s["resources_out"] + s["quarantined"]
    assert s["resources_read"] == 13 + whole_lines + 1 + 161 + 12 + 1
    assert s["quarantined_by_reason"] == {"gzip stream truncated": 2, "gzip stream corrupt": 1, "malformed JSON": 2}
    assert any(w.endswith(f"Condition.ndjson.gz: gzip stream truncated after line {whole_lines}: Compressed "
                          f"file ended before the end-of-stream marker was reached") for w in s["warnings"])


def test_a_gzip_truncated_in_its_first_line(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "Patient.ndjson.gz").write_bytes(gzip.compress(b"\n".join(_lines("Patient")) + b"\n")[:300])
    s = fhir.extract(folder, tmp_path / "out", progress=False)
    assert (s.resources_read, s.resources_out, s.quarantined, s.persons) == (1, 0, 1, 0)
    assert EventDir.open(tmp_path / "out").quarantine().column("reason")[0].as_py().startswith(
        "gzip stream truncated after line 0")


# -- 4. files the reader does not take are listed, not passed over in silence ---------------------------------
def test_skipped_files_are_listed(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "Patient.ndjson").write_bytes(b"\n".join(_lines("Patient")) + b"\n")
    (folder / "Condition.ndjson").write_bytes(b"\n".join(_lines("Condition")) + b"\n")
    for name in ("Condition.ndjson~", "Patient.json.bak", "notes.txt", "Encounter.json_", "._Patient.ndjson",
                 ".cache/Condition.ndjson"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"\x00\x05\x16\x07 not JSON")
    (folder / "log.ndjson").write_bytes(gzip.decompress((NDJSON / "log.ndjson.gz").read_bytes()))
    assert main(["extract", "--source", str(folder), "--out", str(tmp_path / "out"), "--quiet",
                 "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    reasons = Counter(f["reason"] for f in s["skipped_files"])
    assert sorted(f["file"] for f in s["skipped_files"]) == sorted(
        ["Condition.ndjson~", "Patient.json.bak", "notes.txt", "Encounter.json_", "log.ndjson", "._Patient.ndjson",
         ".cache/Condition.ndjson"])
    assert reasons == {"name not *.ndjson, *.jsonl or *.json, each optionally .gz": 4,
                       "bulk-export manifest/log, not data": 1, "hidden (a name starting with '.')": 2}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["skipped_files"] == s["skipped_files"] == manifest["summary"]["skipped_files"]
    assert s["resources_read"] == 13 + 555 and s["resources_in"] == s["resources_out"] + s["quarantined"]
    summary = fhir.FhirExtractSummary(source="x", skipped_files=s["skipped_files"])
    assert "skipped       7 files: 2 hidden (a name starting with '.') (._Patient.ndjson, " \
           ".cache/Condition.ndjson); 4 name not *.ndjson" in summary.table()


# -- 5. a JSON file that is not FHIR says what was expected ------------------------------------------------
@pytest.mark.parametrize("name,content,found", [
    ("x.json", '{"hello": "world"}', "found a JSON object without resourceType"),
    ("x.json", "[1, 2]", "found a JSON array"),
    ("x.json", "", "found an empty file"),
    ("x.json", "hello", "found text that is not JSON"),
    ("x.ndjson", '{"a": 1}\n{"b": 2}\n', "found a JSON object without resourceType on line 1"),
    ("x.json.gz", gzip.compress(b'{"hello": 1}', mtime=0), "found a JSON object without resourceType")])
@pytest.mark.parametrize("fmt", [[], ["--format", "fhir"]], ids=["detected", "--format fhir"])
def test_a_json_that_is_not_fhir_says_what_was_expected(tmp_path, capsys, name, content, found, fmt):
    src = tmp_path / name
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["extract", "--source", str(src), "--out", str(tmp_path / "out"), *fmt]) == 2
    err = capsys.readouterr().err
    assert f"{name}: not FHIR (expected a Bundle, a single resource with resourceType, or NDJSON of resources; " \
           f"{found}" in err
    assert "DuckDB" not in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


# -- 3. workers die with their parent; Ctrl-C leaves a resumable run ----------------------------------------
@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """The NDJSON fixtures replicated with new ids (about 24k resources), for runs that last a few seconds."""
    root = tmp_path_factory.mktemp("fhir_big")
    src = root / "src"
    src.mkdir()
    files = [(p.name[:-3], gzip.decompress(p.read_bytes())) for p in sorted(NDJSON.glob("*.ndjson.gz"))
             if not p.name.startswith("log")]
    for k in range(COPIES):
        for name, data in files:
            (src / f"{name.split('.')[0]}.{k:03d}.ndjson").write_bytes(UUID.sub(b"\\1-c%d" % k, data))
    return src


_RUN = ("import sys; import omop_behrt.adapters.fhir as f; f._PART_BYTES = 1 << 20; "
        "from omop_behrt.cli.main import run; run(sys.argv[1:])")


def _start(src: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RUN, "extract", "--source", str(src), "--out", str(out),
                             "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the worker processes")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_die_when_the_parent_is_killed(big_source, tmp_path, sig):
    p = _start(big_source, tmp_path / "out")
    workers: list[int] = []
    try:
        assert _wait(lambda: len(_children(p.pid)) >= 2, 60), "no worker processes appeared"
        workers = _children(p.pid)
        p.send_signal(sig)
        _, err = p.communicate(timeout=20)
        assert _wait(lambda: not any(_alive(w) for w in workers), 5), \
            f"workers still alive after the parent was killed: {[w for w in workers if _alive(w)]}"
        if sig == signal.SIGTERM:          # handled like Ctrl-C: one line, resumable
            assert p.returncode == 130 and "Traceback" not in err.decode(), err.decode()
    finally:
        if p.poll() is None:
            p.kill()
        for w in workers:
            if _alive(w):                   # a failed run must not leave its orphans behind
                os.kill(w, signal.SIGKILL)


def _orphan(gone: bool) -> None:
    try:
        from omop_behrt.adapters import fhir_pool
    except ImportError:
        os._exit(2)
    # as if re-parented (gone) or still the child of the parent that started it
    fhir_pool._parent = os.getppid() + (1_000_000 if gone else 0)
    fhir_pool.exit_if_orphaned()
    os._exit(0)


@pytest.mark.parametrize("gone,code", [(True, 1), (False, 0)], ids=["parent gone", "parent alive"])
def test_a_worker_whose_parent_is_gone_exits_without_prctl(gone, code):
    """The portable fallback to PR_SET_PDEATHSIG: a worker checks its parent between files and batches."""
    import multiprocessing
    p = multiprocessing.get_context("fork").Process(target=_orphan, args=(gone,))
    p.start()
    p.join(10)
    assert p.exitcode == code


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the worker processes")
def test_ctrl_c_stops_quietly_and_resume_equals_a_clean_run(big_source, tmp_path):
    out = tmp_path / "out"
    p = _start(big_source, out)
    workers: list[int] = []
    try:
        def some_parts_done() -> bool:
            try:
                return len(json.loads((out / "manifest.json").read_text()).get("parts", {})) >= 1
            except (OSError, ValueError):
                return False
        assert _wait(some_parts_done, 60) and len(_children(p.pid)) >= 2
        workers = _children(p.pid)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    err = err.decode()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "omop-behrt extract: interrupted; run again with --resume to continue"
    assert _wait(lambda: not any(_alive(w) for w in workers), 5)
    manifest = json.loads((out / "manifest.json").read_text())
    done_before = len(manifest["parts"])
    assert "summary" not in manifest and done_before >= 1

    resumed = _start(big_source, out, "--resume")
    clean = _start(big_source, tmp_path / "clean")
    for proc in (resumed, clean):
        _, e = proc.communicate(timeout=120)
        assert proc.returncode == 0, e.decode()
    a = json.loads((out / "manifest.json").read_text())["summary"]
    b = json.loads((tmp_path / "clean" / "manifest.json").read_text())["summary"]
    for k in ("resources_read", "resources_in", "resources_out", "quarantined", "events_out", "events_by_domain",
              "persons", "visits"):
        assert a[k] == b[k], k
    assert a["resources_read"] == COPIES * 5945
    da, db = EventDir.open(out), EventDir.open(tmp_path / "clean")
    assert _sorted_table(da).equals(_sorted_table(db))
    assert da.persons().sort_by("subject_id").equals(db.persons().sort_by("subject_id"))


def test_resume_refuses_other_inputs(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "Patient.ndjson").write_bytes(b"\n".join(_lines("Patient")) + b"\n")
    (folder / "Condition.ndjson").write_bytes(b"\n".join(_lines("Condition")[:100]) + b"\n")
    out = tmp_path / "out"
    first = fhir.extract(folder, out, progress=False)
    assert fhir.extract(folder, out, progress=False, resume=True).events_out == first.events_out == 100
    with pytest.raises(ValueError, match=r"--resume: .* other inputs: validate was False, now True"):
        fhir.extract(folder, out, progress=False, resume=True, validate=True)
    (folder / "Condition.ndjson").write_bytes(b"\n".join(_lines("Condition")[:200]) + b"\n")
    with pytest.raises(ValueError, match=r"other inputs: files was '2 files, .* bytes, sha256 \w+', now '2 files"):
        fhir.extract(folder, out, progress=False, resume=True)
    assert main(["extract", "--source", str(folder), "--out", str(out), "--resume", "--quiet"]) == 2
    assert fhir.extract(folder, out, progress=False).events_out == 200      # without --resume: starts over


def _die(args) -> dict:
    os._exit(3)


def test_a_worker_that_dies_is_one_clear_error(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "Patient.ndjson").write_bytes(b"\n".join(_lines("Patient")) + b"\n")
    (folder / "Condition.ndjson").write_bytes(b"\n".join(_lines("Condition")[:50]) + b"\n")
    monkeypatch.setattr(fhir, "_PART_BYTES", 1)
    monkeypatch.setattr(fhir, "run_part", _die)
    assert main(["extract", "--source", str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "omop-behrt extract: error: a worker process died before its part was finished" in err
    assert "--resume" in err and "Traceback" not in err

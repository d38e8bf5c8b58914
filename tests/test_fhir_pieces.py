"""A large plain NDJSON file (a server's single bulk-export file) is cut into line-aligned byte ranges that several
workers read: the cuts never split a line, every line keeps its number, and the extraction (events, persons,
quarantine with file and line, repeated resources, summary) equals reading the file whole."""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from omop_behrt.adapters import fhir, fhir_reader
from omop_behrt.adapters.fhir_reader import ndjson_pieces, read_ndjson
from omop_behrt.events import EventDir, extracting

NDJSON = Path(__file__).parent / "data" / "fhir" / "ndjson"


@pytest.mark.parametrize("block", [7, 64, 4096, 1 << 24])
def test_pieces_are_line_aligned_and_read_as_the_whole_file(tmp_path, monkeypatch, block):
    """Random files (blank lines, long lines, no final newline) and part sizes, read in blocks smaller and larger
    than a line: the pieces tile the file, start at line starts with the right line number, and their Items are
    the whole file's."""
    monkeypatch.setattr(fhir_reader, "_BLOCK", block)
    rng = random.Random(block)
    for trial in range(120):
        lines = []
        for i in range(rng.randint(0, 50)):
            kind = rng.random()
            lines.append(b"" if kind < 0.1 else b"  " if kind < 0.15 else b"{not json" if kind < 0.2 else
                         b'{"resourceType":"Patient","id":"%d","x":"%s"}' % (i, b"y" * rng.randint(0, 400)))
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.7 else b"")
        f = tmp_path / f"t{trial}.ndjson"
        f.write_bytes(data)
        pieces = ndjson_pieces(f, rng.randint(1, 3000))
        assert pieces[0][0] == 0 and pieces[-1][1] == len(data)
        for (start, end, line), (nxt, _, _) in zip(pieces, pieces[1:]):
            assert end == nxt and start < end
            assert start == 0 or data[start - 1:start] == b"\n"
            assert line == data[:start].count(b"\n") + 1
        whole = [(i.row, i.resource, i.error) for i in read_ndjson(f)]
        assert [(i.row, i.resource, i.error) for s, e, n in pieces for i in read_ndjson(f, None, s, e, n)] == whole


def _one_big_file(folder: Path) -> Path:
    """Every resource of the NDJSON fixture in one plain export file (Patients first), with bad lines and a repeated
    resource placed so that they fall in different pieces."""
    lines = []
    for f in sorted(NDJSON.glob("*.ndjson.gz"), key=lambda f: (not f.name.startswith("Patient"), f.name)):
        lines += [line for line in gzip.decompress(f.read_bytes()).decode().splitlines() if line.strip()]
    cond = next(line for line in lines if '"resourceType":"Condition"' in line.replace(" ", ""))
    at = len(lines) // 2
    lines[at:at] = ['{"resourceType": "Condition", "id": "broken", ', "",
                    json.dumps({"resourceType": "Foo", "id": "x"})]
    lines.append(cond)                                 # the same Condition again, last: a duplicate
    folder.mkdir()
    (folder / "export.ndjson").write_text("\n".join(lines) + "\n")
    return folder


def test_a_large_ndjson_file_in_pieces_extracts_as_whole(tmp_path, monkeypatch):
    src = _one_big_file(tmp_path / "src")
    size = (src / "export.ndjson").stat().st_size
    with monkeypatch.context() as m:                    # one part: the file read whole, in one process
        m.setattr(fhir, "_PART_BYTES", 1 << 40)
        m.setattr(fhir, "_MIN_PART_BYTES", 1 << 40)
        whole = fhir.extract(src, tmp_path / "whole", progress=False, workers=1)
    monkeypatch.setattr(fhir, "_PART_BYTES", size // 9)
    monkeypatch.setattr(fhir, "_MIN_PART_BYTES", 1)
    parts = fhir._parts([src / "export.ndjson"])
    assert len(parts) >= 9 and all(type(p[0]) is list for p in parts)
    cut = fhir.extract(src, tmp_path / "cut", progress=False, workers=2)
    a, b = EventDir.open(tmp_path / "cut"), EventDir.open(tmp_path / "whole")
    assert len(a.manifest["parts"]) == len(parts) and len(b.manifest["parts"]) == 1

    def rows(t: pa.Table) -> list:
        return sorted(map(repr, t.to_pylist()))
    assert rows(a.read_events()) == rows(b.read_events()) and a.read_events().num_rows > 1000
    assert rows(a.quarantine()) == rows(b.quarantine())
    q = a.quarantine().to_pylist()

    def line_of(prefix: str) -> int:
        return next(int(r["row"]) for r in q if r["reason"].startswith(prefix))
    lines = (src / "export.ndjson").read_text().splitlines()
    assert lines[line_of("malformed JSON") - 1].startswith('{"resourceType": "Condition", "id": "broken"')
    assert json.loads(lines[line_of("unknown resourceType 'Foo'") - 1]) == {"resourceType": "Foo", "id": "x"}
    assert line_of("duplicate Condition/") == len(lines)          # the later copy, at the last line
    for name in ("persons", "observation_periods", "descriptions"):
        assert getattr(a, name)().sort_by("subject_id" if name != "descriptions" else "code").equals(
            getattr(b, name)().sort_by("subject_id" if name != "descriptions" else "code")), name
    for k in ("resources_read", "resources_in", "resources_out", "quarantined", "events_out", "persons",
              "resources_by_type", "ignored_by_type", "quarantined_by_reason", "duplicates_by_type"):
        assert getattr(cut, k) == getattr(whole, k), k
    assert cut.resources_in == cut.resources_out + cut.quarantined
    # a run stopped with two pieces of the file left: resume finds the same cut and reads only those
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    for k in ("3", "6"):
        del manifest["parts"][k]
    manifest.pop("summary", None)
    (tmp_path / "cut" / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(fhir, "_PARTS", 64)            # resumed on a machine with more cores: cut as before
    assert len(fhir._parts([src / "export.ndjson"])) != len(parts)
    again = fhir.extract(src, tmp_path / "cut", progress=False, workers=2, resume=True)
    a = EventDir.open(tmp_path / "cut")
    assert again.events_out == cut.events_out and rows(a.read_events()) == rows(b.read_events())
    assert rows(a.quarantine()) == rows(b.quarantine())


def test_gzip_and_small_files_stay_whole(tmp_path, monkeypatch):
    """A .ndjson.gz cannot be entered in the middle; Bundles are whole documents: neither is cut."""
    monkeypatch.setattr(fhir, "_PART_BYTES", 1000)
    monkeypatch.setattr(fhir, "_MIN_PART_BYTES", 1)
    files = sorted(NDJSON.glob("*.ndjson.gz"))
    assert all(type(piece) is str for part in fhir._parts(files) for piece in part)


@pytest.mark.parametrize("with_msgspec", [True, False])
def test_patient_ids_read_up_front_are_the_top_level_ids_of_patients(tmp_path, monkeypatch, with_msgspec):
    """Only Patients' own ids: not a nested id, not another type's, not a broken line; resourceType anywhere in
    the object. Without msgspec the same ids come from orjson."""
    if not with_msgspec:
        monkeypatch.setattr(fhir_reader, "msgspec", None)
    lines = [json.dumps({"resourceType": "Patient", "id": "a", "meta": {"id": "not-me"}}),
             json.dumps({"meta": {"id": "nested"}, "id": "b", "resourceType": "Patient"}),     # type not first
             json.dumps({"resourceType": "Observation", "id": "obs", "subject": {"reference": "Patient/a"}}),
             '{"resourceType": "Patient", "id": "broken", ',
             json.dumps({"resourceType": "Patient", "id": 7}),                                 # not a string
             json.dumps(["resourceType", "Patient"]), "", "   ",
             json.dumps({"resourceType": "Patient", "extension": [{"id": "x", "url": "u"}], "id": "c"})]
    f = tmp_path / "Patient.ndjson"
    f.write_text("\n".join(lines) + "\n")
    assert list(fhir_reader.patient_ids(f)) == ["a", "b", "c"]
    assert fhir._patient_ids_first([f]) == {fhir.fhir_id(x) for x in "abc"}


def test_a_byte_order_mark_and_crlf_lines_are_read(tmp_path):
    """Windows tools write a UTF-8 byte order mark first and end lines with CRLF: the first Patient was quarantined
    as malformed JSON (and its Conditions as unresolvable). NDJSON and a Bundle read as without them."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("Patient.000.ndjson.gz", "Condition.000.ndjson.gz"):
        lines = gzip.decompress((NDJSON / name).read_bytes()).splitlines()
        (src / name.removesuffix(".gz")).write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    bundle = sorted((NDJSON.parent / "bundles").glob("*.json.gz"))[0]
    (src / "bundle.json").write_bytes(b"\xef\xbb\xbf" + gzip.decompress(bundle.read_bytes()))
    s = fhir.extract(src, tmp_path / "out", progress=False)
    assert s.quarantined == 0 and s.persons == 14, s.quarantined_by_reason
    assert fhir._patient_ids_first([src / "Patient.000.ndjson"]) == {
        fhir.fhir_id(json.loads(line)["id"])
        for line in gzip.decompress((NDJSON / "Patient.000.ndjson.gz").read_bytes()).splitlines() if line.strip()}


def test_ndjson_in_files_named_json_is_read_line_by_line(tmp_path):
    """Some servers name bulk-export files ``Patient.json``: each was one "malformed JSON" quarantine record, and
    every resource in it was lost to the counts. Now read as NDJSON: every resource, bad lines named by line."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("Patient.000.ndjson.gz", "Condition.000.ndjson.gz"):
        data = gzip.decompress((NDJSON / name).read_bytes())
        if name.startswith("Condition"):
            data += b'{"resourceType": "Condition", "id": "cut", \n'
        (src / name.replace(".000.ndjson.gz", ".json")).write_bytes(data)
    s = fhir.extract(src, tmp_path / "out", progress=False)
    ref = fhir.extract(NDJSON, tmp_path / "ref", progress=False)
    assert s.persons == 13 and s.resources_in == s.resources_out + s.quarantined
    assert s.resources_by_type == {t: ref.resources_by_type[t] for t in ("Patient", "Condition")}
    assert s.resources_read == sum(s.resources_by_type.values()) + 1 and s.quarantined == 1
    q = EventDir.open(tmp_path / "out").quarantine().to_pylist()
    assert [(r["source"].rsplit("/", 1)[1], r["reason"].split(":")[0]) for r in q] == [
        ("Condition.json", "malformed JSON")]
    lines = (src / "Condition.json").read_bytes().splitlines()
    assert lines[int(q[0]["row"]) - 1].startswith(b'{"resourceType": "Condition", "id": "cut"')
    # one JSON document that is broken stays one record for the file
    (src / "Condition.json").write_text('{"resourceType": "Bundle", "type": "collection", "entry": [')
    s = fhir.extract(src, tmp_path / "out2", progress=False)
    assert s.quarantined_by_reason == {"malformed JSON": 1}


def test_bundles_one_per_ndjson_line_are_read_as_bundles(tmp_path):
    """Some pipelines write one patient's Bundle per NDJSON line: each line was one "ignored" Bundle, and every
    resource in it was lost. Now the entries are read with their Bundle's fullUrls (urn:uuid: references
    resolve), as the same Bundles in files; a line whose Bundle.type is not one is quarantined; a plain resource
    after the Bundles resolves its references as in any NDJSON file."""
    import orjson
    bundles = [orjson.loads(gzip.decompress(f.read_bytes()))
               for f in sorted((NDJSON.parent / "bundles").glob("*.json.gz"))]
    patient = next(e["resource"] for e in bundles[0]["entry"] if e["resource"]["resourceType"] == "Patient")
    cond = {"resourceType": "Condition", "id": "after-bundles", "subject": {"reference": f"Patient/{patient['id']}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "onsetDateTime": "2020-05-01"}
    lines = [orjson.dumps(b) for b in bundles] + [b'{"resourceType": "Bundle", "type": "nonsense", "entry": []}',
                                                  orjson.dumps(cond)]
    src = tmp_path / "src"
    src.mkdir()
    (src / "bundles.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    s = fhir.extract(src, tmp_path / "out", progress=False)
    ref = fhir.extract(NDJSON.parent / "bundles", tmp_path / "ref", progress=False)
    assert s.persons == ref.persons == 5
    assert s.resources_out == ref.resources_out + 1 and s.ignored_by_type == ref.ignored_by_type
    q = EventDir.open(tmp_path / "out").quarantine().to_pylist()
    assert [(r["row"], r["reason"].split(" (")[0]) for r in q] == [("6", "Bundle.type 'nonsense' is not a Bundle type")]
    a = EventDir.open(tmp_path / "out").read_events().to_pylist()
    b = EventDir.open(tmp_path / "ref").read_events().to_pylist()
    assert sorted(map(repr, b)) == sorted(map(repr, (r for r in a if r["time"].year != 2020 or r["code"] !=
                                                     "SNOMED/44054006" or r["subject_id"] != fhir.fhir_id(
                                                         patient["id"]))))
    assert len(a) == len(b) + 1


def test_values_a_float32_cannot_hold_are_dropped_with_a_warning(tmp_path):
    """A Quantity of 1e308 (or "1e39" as text) became inf in the 32-bit numeric_value: now no value, the event kept,
    and the summary warns."""
    import pyarrow.compute as pc
    src = tmp_path / "src"
    src.mkdir()
    pat = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"}

    def obs(i: int, value: object) -> dict:
        return {"resourceType": "Observation", "id": f"o{i}", "status": "final", "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "effectiveDateTime": f"2020-01-0{i}", "valueQuantity": {"value": value, "unit": "cm"}}
    (src / "Patient.ndjson").write_text(json.dumps(pat) + "\n")
    (src / "Observation.ndjson").write_text("\n".join(json.dumps(obs(i, v)) for i, v in
                                                      enumerate((7.5, 1e308, "1e39", -3.3e38, "7,5", True,
                                                                 {"v": 1}, "4.5"), 1)) + "\n")
    s = fhir.extract(src, tmp_path / "out", progress=False)
    assert s.resources_out == 9 and s.quarantined == 0
    assert "2 values a 32-bit float cannot hold (NaN, infinite or beyond +-3.4e38) dropped; their events kept " \
           "without a value" in s.warnings
    # a string that is no number, a boolean, an object: no value, counted (they vanished silently before)
    assert '3 values that are not numbers (a string such as "7,5" where FHIR asks for a decimal) dropped; their ' \
           'events kept without a value' in s.warnings
    t = EventDir.open(tmp_path / "out").read_events().sort_by("time")
    values = t["numeric_value"]
    assert values.to_pylist()[:3] == [7.5, None, None] and pc.sum(pc.is_inf(values)).as_py() == 0
    assert values.to_pylist()[4:] == [None, None, None, 4.5]
    assert t["unit"].to_pylist()[:3] == ["cm", None, None]


def test_a_second_extraction_into_the_same_directory_is_refused_while_the_first_runs(tmp_path):
    """Two FHIR extractions into one event directory at once: the second clears and overwrites the first's parts
    and manifest half-way. It is refused at once, naming the directory; the first's output stays whole."""
    out = tmp_path / "out"
    first = fhir.extract(NDJSON, out, progress=False)
    with extracting(out):       # the first run, still writing
        with pytest.raises(ValueError, match="another extraction is writing this event directory"):
            fhir.extract(NDJSON, out, progress=False)
    assert EventDir.open(out).read_events().num_rows == first.events_out
    assert fhir.extract(NDJSON, out, progress=False).events_out == first.events_out     # free again

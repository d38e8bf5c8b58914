"""Clinical notes (OMOP note.note_text): extracted on request, censored like the events, appended to the serialised
record or embedded one by one and pooled; a note after the index date changes nothing."""
from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from omop_behrt.adapters import omop
from omop_behrt.tasks.cohorts import INDEX_SCHEMA
from omop_behrt.events import NOTES_SCHEMA, EventDir
from omop_behrt.text.serialize import serialize

PERSON, OTHER = 5111, 6      # index dates: the ends of their observation periods, 1984-12-10 and 2007-02-06

# Synthea's encounter-note template (what Synthea >= 2.5 writes as DocumentReference text), for PERSON
NOTE_OLD = ("\n1980-05-02\n\n# Chief Complaint\n- Abdominal pain\n\n# History of Present Illness\nThe patient is a "
            "35 year-old male.\n\n# Assessment and Plan\nGastrointestinal hemorrhage. Admitted.\n")
NOTE_RECENT = ("\n1984-12-03\n\n# Chief Complaint\n- Chest pain\n\n# Assessment and Plan\nMyocardial infarction;"
               "   coronary artery bypass graft.\n")
NOTE_INDEX_DAY = "1984-12-10 discharge summary: written on the index day, not strictly before it"
NOTE_LATER = "1990-01-01 note written years after the index date: must never be seen"

NOTE_COLUMNS = ("note_id BIGINT, person_id BIGINT, note_date VARCHAR, note_datetime TIMESTAMP, "
                "note_type_concept_id BIGINT, note_class_concept_id BIGINT, note_title VARCHAR, note_text VARCHAR, "
                "encoding_concept_id BIGINT, language_concept_id BIGINT, provider_id BIGINT, "
                "visit_occurrence_id BIGINT, visit_detail_id BIGINT, note_source_value VARCHAR")


def _notes_cdm(src, dst, later: bool = False):
    """A copy of Eunomia whose broken note table (a header row as data) is replaced by a CDM 5.3 one."""
    shutil.copy(src, dst)
    con = duckdb.connect(str(dst))
    try:
        visit = con.execute("SELECT visit_occurrence_id FROM visit_occurrence WHERE person_id = ? "
                            "ORDER BY visit_start_date LIMIT 1", [PERSON]).fetchone()[0]
        con.execute("DROP TABLE note")
        con.execute(f"CREATE TABLE note ({NOTE_COLUMNS})")
        rows = [
            (1, PERSON, "1980-05-02", None, "Progress note", NOTE_OLD, visit),
            (2, PERSON, "1984-12-03", "1984-12-03 10:30:00", "Discharge summary", NOTE_RECENT, None),
            (3, PERSON, "1984-12-10", None, "Discharge summary", NOTE_INDEX_DAY, None),
            (4, OTHER, "2008-03-01", None, None, "Untitled note of another person", None),
            # messy rows: each is quarantined with its reason
            (5, None, "1983-01-01", None, "x", "no person", None),
            (6, 999999999, "1983-01-01", None, "x", "unknown person", None),
            (7, PERSON, "1983-13-45", None, "x", "a date that does not exist", None),
            (8, PERSON, "1983-01-01", None, "x", "   ", None),
        ]
        if later:
            rows.append((9, PERSON, "1990-01-01", None, "Progress note", NOTE_LATER, None))
        con.executemany("INSERT INTO note (note_id, person_id, note_date, note_datetime, note_title, note_text, "
                        "visit_occurrence_id) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return visit
    finally:
        con.close()


@pytest.fixture(scope="module")
def notes_cdm(eunomia_db, tmp_path_factory):
    db = tmp_path_factory.mktemp("notes") / "notes.duckdb"
    visit = _notes_cdm(eunomia_db, db)
    return db, visit


@pytest.fixture(scope="module")
def notes_events(notes_cdm, tmp_path_factory):
    out = tmp_path_factory.mktemp("notes_events") / "ev"
    summary = omop.extract(notes_cdm[0], out, options=omop.ExtractOptions(notes=True), progress=False)
    return EventDir.open(out), summary


@pytest.fixture(scope="module")
def index(eunomia_db) -> pa.Table:
    con = duckdb.connect(str(eunomia_db), read_only=True)
    try:
        return con.sql("SELECT 1::BIGINT AS cohort_definition_id, person_id::BIGINT AS subject_id, "
                       "CAST(observation_period_end_date AS TIMESTAMP) AS index_date FROM observation_period "
                       f"WHERE person_id IN ({PERSON}, {OTHER}) ORDER BY person_id").to_arrow_table().cast(INDEX_SCHEMA)
    finally:
        con.close()


def _row(result, subject: int) -> str:
    t = result.texts
    return t.filter(pc.equal(t["subject_id"], subject))["text"][0].as_py()


def test_notes_asked_of_a_cdm_without_a_usable_note_table(eunomia_db, tmp_path):
    """Eunomia's note table is a header row stored as data: asked for notes, the extraction says so and keeps an
    empty notes/ folder (asked, none there)."""
    s = omop.extract(eunomia_db, tmp_path / "ev", options=omop.ExtractOptions(notes=True, domains=["death"]),
                     progress=False)
    assert s.skipped == {"death": "table death has no CDM columns", "note": "table note has no CDM columns"}
    ev = EventDir.open(tmp_path / "ev")
    assert ev.has_notes() and ev.note_files() == [] and ev.manifest["skipped"] == s.skipped


def test_extract_notes_counts_and_quarantine(notes_cdm, notes_events):
    events, summary = notes_events
    assert summary.clinical_notes == {"read": 8, "written": 4, "quarantined": 4}    # the rows planted below
    assert [f.name for f in events.note_files()] == ["note-00000.parquet"] and "note" not in summary.skipped
    db, visit = notes_cdm
    notes = events.notes().to_table().sort_by("note_id")
    assert notes.schema.equals(NOTES_SCHEMA)
    assert notes["note_id"].to_pylist() == ["1", "2", "3", "4"]
    assert notes["text"][0].as_py() == NOTE_OLD                        # the text as stored, byte for byte
    assert notes["visit_id"].to_pylist() == [visit, None, None, None]
    assert notes["time"][1].as_py().isoformat() == "1984-12-03T10:30:00"   # note_datetime on note_date
    assert notes["title"].to_pylist() == ["Progress note", "Discharge summary", "Discharge summary", None]
    part = events.manifest["parts"]["note"]
    q = events.quarantine().filter(pc.equal(events.quarantine()["source"], "note"))
    reasons = dict(zip(q["row"].to_pylist(), q["reason"].to_pylist()))
    assert reasons == {"5": "null person_id", "6": "person_id not in person table",
                       "7": "note_date '1983-13-45' is not a date (YYYY-MM-DD)", "8": "empty note_text"}
    assert part["rows_in"] == 8 == part["rows_out"] + part["quarantined"]


def test_notes_only_when_asked(eunomia_db, eunomia_events, tmp_path):
    assert not eunomia_events.has_notes() and eunomia_events.notes().count_rows() == 0
    # Eunomia's own note table is a header row stored as data: asked for, it is skipped with that reason
    out = omop.extract(eunomia_db, tmp_path / "ev", options=omop.ExtractOptions(notes=True), progress=False)
    ev = EventDir.open(tmp_path / "ev")
    assert ev.has_notes() and ev.notes().count_rows() == 0
    assert out.skipped["note"] == "table note has no CDM columns"


def test_extraction_censors_notes_in_sql(notes_cdm, index, tmp_path):
    opts = omop.ExtractOptions(index_dates=index.select(["subject_id", "index_date"]), notes=True)
    omop.extract(notes_cdm[0], tmp_path / "ev", options=opts, progress=False)
    kept = EventDir.open(tmp_path / "ev").notes().to_table()
    assert sorted(kept["note_id"].to_pylist()) == ["1", "2"]            # the index-day note and later ones stay out


def test_appended_notes(notes_events, index, eunomia_db):
    events, _ = notes_events
    plain = serialize(events, index, cdm=eunomia_db)
    got = serialize(events, index, cdm=eunomia_db, notes="append")
    text = _row(got, PERSON)
    assert text.startswith(_row(plain, PERSON) + "\nNotes:\n")          # the coded record unchanged, notes last
    tail = text.split("\nNotes:\n", 1)[1].split("\n")
    assert tail == ["- Discharge summary, 7 days before: 1984-12-03 # Chief Complaint - Chest pain # Assessment "
                    "and Plan Myocardial infarction; coronary artery bypass graft.",
                    "- Progress note, 4 years before: 1980-05-02 # Chief Complaint - Abdominal pain # History of "
                    "Present Illness The patient is a 35 year-old male. # Assessment and Plan Gastrointestinal "
                    "hemorrhage. Admitted."]
    assert NOTE_INDEX_DAY not in text
    assert serialize(events, index, cdm=eunomia_db, notes=True).texts.equals(got.texts)    # True: the default, append
    assert _row(got, OTHER) == _row(plain, OTHER)                       # OTHER's only note is after the index
    assert got.provenance["notes"] == {"mode": "append", "notes": 2, "rows_with_notes": 1,
                                       "note_chars": sum(len(line.split(": ", 1)[1]) for line in tail)}
    # truncation drops the oldest lines first, note or code: the 4-year-old note goes, the 7-day-old one stays
    short = serialize(events, index, cdm=eunomia_db, notes="append", max_chars=700)
    kept = _row(short, PERSON)
    assert len(kept) <= 700 and "Chest pain" in kept and "Myocardial infarction: 7 days" in kept
    assert "Abdominal pain" not in kept and "Streptococcal sore throat" not in kept


def test_pooled_notes_are_apart(notes_events, index, eunomia_db):
    events, _ = notes_events
    plain = serialize(events, index, cdm=eunomia_db)
    got = serialize(events, index, cdm=eunomia_db, notes="pooled")
    assert got.texts.equals(plain.texts)
    row = index["subject_id"].to_pylist().index(PERSON)
    assert got.notes["row"].to_pylist() == [row, row] and got.notes["days"].to_pylist() == [7, 1683]
    assert got.notes["text"][0].as_py().startswith("Discharge summary: 1984-12-03 # Chief Complaint")


@pytest.mark.parametrize("mode", ["append", "pooled"])
def test_a_note_after_the_index_date_changes_nothing(notes_cdm, eunomia_db, index, tmp_path, mode):
    """The leakage test: the same CDM with a note planted after the index date gives the same texts and notes,
    through the CDM (censoring in the extraction SQL) and through an event directory (the serialiser's cut)."""
    later = tmp_path / "later.duckdb"
    _notes_cdm(eunomia_db, later, later=True)
    for source_of in (lambda db, w: db,
                      lambda db, w: omop.extract(db, w, options=omop.ExtractOptions(notes=True), progress=False)
                      and w):
        a = serialize(source_of(notes_cdm[0], tmp_path / f"a-{mode}"), index, notes=mode, cdm=eunomia_db,
                      work_dir=tmp_path / f"wa-{mode}")
        b = serialize(source_of(later, tmp_path / f"b-{mode}"), index, notes=mode, cdm=eunomia_db,
                      work_dir=tmp_path / f"wb-{mode}")
        assert a.texts.equals(b.texts)
        assert (a.notes is None and b.notes is None) or a.notes.equals(b.notes)
        assert NOTE_LATER not in "".join(b.texts["text"].to_pylist())
        shutil.rmtree(tmp_path / f"wa-{mode}", ignore_errors=True)
        shutil.rmtree(tmp_path / f"wb-{mode}", ignore_errors=True)


def test_notes_need_an_extraction_with_notes(eunomia_events, index):
    with pytest.raises(ValueError, match="extracted without notes.*extract --notes"):
        serialize(eunomia_events, index, notes="append")
    with pytest.raises(ValueError, match="notes must be one of none, append, pooled"):
        serialize(eunomia_events, index, notes="inline")


def test_pooled_vectors(notes_events, index, eunomia_db, tmp_path):
    pytest.importorskip("transformers", reason="the text encoder needs transformers (pip install 'omop-behrt[text]')")
    from test_text_encoder import _bert_dir

    from omop_behrt.vectors.embed_text import embed_text_cohort
    from omop_behrt.text.encoder import TextEncoder
    events, _ = notes_events
    encoder = TextEncoder(_bert_dir(tmp_path / "bert"), device="cpu")
    plain = embed_text_cohort(events, index, encoder=encoder, cdm=eunomia_db, progress=False)
    pooled = embed_text_cohort(events, index, encoder=encoder, cdm=eunomia_db, notes="pooled", progress=False)
    notes = serialize(events, index, notes="pooled").notes
    by_hand = encoder.encode(notes["text"]).mean(axis=0)
    row = index["subject_id"].to_pylist().index(PERSON)
    np.testing.assert_allclose(pooled.vectors[row], (plain.vectors[row] + by_hand) / 2, rtol=1e-5, atol=1e-6)
    other = 1 - row
    np.testing.assert_array_equal(pooled.vectors[other], plain.vectors[other])     # no note: the record's vector
    assert pooled.provenance["notes"]["notes"] == 2 and pooled.has_history.all()
    appended = embed_text_cohort(events, index, encoder=encoder, cdm=eunomia_db, notes="append", progress=False)
    assert not np.allclose(appended.vectors[row], plain.vectors[row])
    np.testing.assert_allclose(appended.vectors[other], plain.vectors[other], rtol=1e-5, atol=1e-6)


def test_cli_extract_and_embed_with_notes(notes_cdm, index, tmp_path, capsys):
    pytest.importorskip("transformers", reason="the text encoder needs transformers (pip install 'omop-behrt[text]')")
    import json

    import pyarrow.parquet as pq
    from test_text_encoder import _bert_dir

    from omop_behrt.cli.main import main
    from omop_behrt.vectors.embed_text import embed_text_cohort
    from omop_behrt.text.encoder import TextEncoder
    assert main(["extract", "--source", str(notes_cdm[0]), "--out", str(tmp_path / "ev"), "--notes", "--quiet"]) == 0
    assert "notes         4 written, 4 quarantined, 8 read (clinical notes: patient text)" in capsys.readouterr().out
    pq.write_table(index.select(["subject_id", "index_date"]), tmp_path / "ix.parquet")
    index.select(["subject_id", "index_date"]).to_pandas().to_csv(tmp_path / "ix.csv", index=False)
    bert = _bert_dir(tmp_path / "bert")
    target = tmp_path / "v.duckdb"
    assert main(["embed", "--encoder", "text", "--text-model", str(bert), "--notes", "pooled", "--source",
                 str(tmp_path / "ev"), "--cohort", str(tmp_path / "ix.csv"), "--out", str(target), "--quiet"]) == 0
    con = duckdb.connect(str(target), read_only=True)
    try:
        config = json.loads(con.execute("SELECT config FROM results.embedding_model").fetchone()[0])
        got = con.execute("SELECT subject_id, embedding FROM results.patient_embedding ORDER BY subject_id").fetchall()
    finally:
        con.close()
    assert config["notes"] == "pooled" and config["encoder"] == "text"
    want = embed_text_cohort(tmp_path / "ev", index, encoder=TextEncoder(bert, device="cpu"), notes="pooled",
                             progress=False)
    order = np.argsort(index["subject_id"].to_numpy())
    np.testing.assert_allclose(np.array([g[1] for g in got]), want.vectors[order], rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["embed", "--model", str(bert), "--notes", "append", "--source", str(tmp_path / "ev"), "--cohort",
                 str(tmp_path / "ix.csv"), "--out", str(tmp_path / "x.parquet"), "--quiet"]) != 0
    assert "--notes is for --encoder text" in capsys.readouterr().err


@pytest.mark.postgres
def test_postgres_notes_match_duckdb(notes_cdm, notes_events, index, pg_url, pg_schema, tmp_path):
    """The note SQL runs in PostgreSQL too (the CDM copied as stored): the same notes, quarantine and censoring."""
    from cdm_fixtures import copy_duckdb_to_postgres
    copy_duckdb_to_postgres(notes_cdm[0], pg_url, pg_schema, tables=["person", "observation_period",
                                                                      "visit_occurrence", "concept", "note"])
    opts = omop.ExtractOptions(domains=["visit"], notes=True)
    omop.extract(pg_url, tmp_path / "pg", cdm_schema=pg_schema, options=opts, progress=False)
    pg = EventDir.open(tmp_path / "pg")
    duck, _ = notes_events
    assert pg.notes().to_table().sort_by("note_id").equals(duck.notes().to_table().sort_by("note_id"))
    reasons = lambda e: sorted(e.quarantine().filter(pc.equal(e.quarantine()["source"], "note"))["reason"]  # noqa: E731
                               .to_pylist())
    assert reasons(pg) == reasons(duck)
    censored = omop.ExtractOptions(domains=["visit"], notes=True,
                                   index_dates=index.select(["subject_id", "index_date"]))
    omop.extract(pg_url, tmp_path / "pgc", cdm_schema=pg_schema, options=censored, progress=False)
    assert sorted(EventDir.open(tmp_path / "pgc").notes().to_table()["note_id"].to_pylist()) == ["1", "2"]


def test_evaluation_takes_notes(notes_cdm, notes_events, index, tiny_model, tmp_path):
    """comparison.prepare(text_notes=...) embeds the task rows with their notes, from the one censored extraction
    the other methods use (no second extraction): the same vectors as embed_text_cohort on the event directory."""
    pytest.importorskip("transformers", reason="the text encoder needs transformers (pip install 'omop-behrt[text]')")
    from test_text_encoder import _bert_dir

    from omop_behrt.evaluation import comparison
    from omop_behrt.vectors.embed_text import embed_text_cohort
    from omop_behrt.tasks.labels import LABELS_SCHEMA, Task
    from omop_behrt.text.encoder import TextEncoder
    labels = pa.table({"subject_id": index["subject_id"], "index_date": index["index_date"],
                       "label": pa.array([1, 0], pa.int8())}).cast(LABELS_SCHEMA)
    encoder = TextEncoder(_bert_dir(tmp_path / "bert"), device="cpu")
    prep = comparison.prepare(tiny_model, notes_cdm[0], Task(labels), text_encoder=encoder, text_notes="pooled")
    assert prep.text.provenance["notes"]["notes"] == 2
    want = embed_text_cohort(notes_events[0], Task(labels).index, encoder=encoder, notes="pooled", progress=False)
    np.testing.assert_allclose(prep.text.vectors, want.vectors, rtol=1e-5, atol=1e-6)


def test_patient_embedder_takes_notes(notes_events, index, tmp_path):
    """The scikit-learn estimator gives the same vectors as embed_text_cohort with notes, and refuses notes for
    BEHRT."""
    pytest.importorskip("transformers", reason="the text encoder needs transformers (pip install 'omop-behrt[text]')")
    from test_text_encoder import _bert_dir

    from omop_behrt.vectors.embed_text import embed_text_cohort
    from omop_behrt.vectors.embedder import PatientEmbedder
    from omop_behrt.text.encoder import TextEncoder
    events, _ = notes_events
    bert = _bert_dir(tmp_path / "bert")
    X = index.select(["subject_id", "index_date"]).to_pandas()
    got = PatientEmbedder(source=events.path, encoder="text", text_model=str(bert), notes="pooled",
                          device="cpu").fit_transform(X)
    want = embed_text_cohort(events, index, encoder=TextEncoder(bert, device="cpu"), notes="pooled", progress=False)
    np.testing.assert_allclose(got, want.vectors, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="notes is for encoder='text'"):
        PatientEmbedder("model", events.path, notes="append").fit()

"""The record serialised as text (serialize.py) on Eunomia: exact text, censoring, determinism, truncation, coverage."""
from __future__ import annotations

import re
import shutil
from datetime import datetime

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omop_behrt.tasks.cohorts import INDEX_SCHEMA
from omop_behrt.events import EVENTS_SCHEMA, EventDir
from omop_behrt.text.serialize import SERIALIZER_VERSION, dump_text, serialize

PERSON = 5111        # 24 events in 6 domains; index at the end of the observation period, 1984-12-10

EXPECTED_DOMAIN = """\
Age at index: 39 years. Sex: male.
Conditions:
- Myocardial infarction: 7 days before
- Viral sinusitis: 4 times, last 4 years before
- Gastrointestinal hemorrhage: 4 years before
- Osteoarthritis: 5 years before
- Coronary arteriosclerosis: 17 years before
- Acute bronchitis: 2 times, last 24 years before
- Streptococcal sore throat: 35 years before
Drugs:
- Acetaminophen 750 MG / Hydrocodone Bitartrate 7.5 MG Oral Tablet: 7 days before
- celecoxib: 5 years before
- Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray: 17 years before
- Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet: 23 years before
- Acetaminophen 325 MG Oral Tablet: 2 times, last 24 years before
- Penicillin V Potassium 250 MG Oral Tablet: 35 years before
Procedures:
- Coronary artery bypass graft: 7 days before
- Percutaneous coronary intervention: 7 days before
- Sputum examination: 36 years before
Measurements:
- Oral temperature: 35 years before
Observations:
- History of myocardial infarction: 7 days before
Visits:
- Inpatient Visit: 4 years before, length of stay 1 day"""

EXPECTED_VISIT_HEAD = """\
Age at index: 39 years. Sex: male.
7 days before:
- condition: Myocardial infarction
- drug: Acetaminophen 750 MG / Hydrocodone Bitartrate 7.5 MG Oral Tablet
- procedure: Coronary artery bypass graft
- procedure: Percutaneous coronary intervention
- observation: History of myocardial infarction
4 years before:
- condition: Viral sinusitis
4 years before:
- visit: Inpatient Visit, length of stay 1 day
- condition: Gastrointestinal hemorrhage
"""


def _index(db, where: str = "") -> pa.Table:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql("SELECT 1::BIGINT AS cohort_definition_id, person_id::BIGINT AS subject_id, "
                       "CAST(observation_period_end_date AS TIMESTAMP) AS index_date "
                       f"FROM person JOIN observation_period USING (person_id) {where} ORDER BY person_id"
                       ).to_arrow_table().cast(INDEX_SCHEMA)
    finally:
        con.close()


@pytest.fixture(scope="module")
def index(eunomia_db) -> pa.Table:
    return _index(eunomia_db)


@pytest.fixture(scope="module")
def texts(eunomia_events, eunomia_db, index):
    return serialize(eunomia_events, index, cdm=eunomia_db)


def _text_of(result, subject: int) -> str:
    t = result.texts
    return t.filter(pa.compute.equal(t["subject_id"], subject))["text"][0].as_py()


def test_exact_text_of_one_person(texts):
    assert _text_of(texts, PERSON) == EXPECTED_DOMAIN
    assert texts.version == SERIALIZER_VERSION == texts.provenance["serializer_version"] == "2"
    assert texts.texts.num_rows == 2694 and texts.texts.column_names == [
        "cohort_definition_id", "subject_id", "index_date", "text", "n_lines", "truncated"]


def test_lines_agree_with_the_cdm(texts, eunomia_db):
    """Counts, last dates and names of the condition lines, recomputed from condition_occurrence and concept."""
    con = duckdb.connect(str(eunomia_db), read_only=True)
    try:
        rows = con.sql("""SELECT c.concept_name, count(*) AS n,
                              date_diff('day', max(co.condition_start_date), DATE '1984-12-10') AS days
                          FROM condition_occurrence co JOIN concept c ON c.concept_id = co.condition_concept_id
                          WHERE co.person_id = 5111 AND co.condition_start_date < DATE '1984-12-10'
                          GROUP BY 1 ORDER BY 3, 1""").fetchall()
        stay = con.sql("SELECT visit_end_date - visit_start_date, c.concept_name FROM visit_occurrence v JOIN concept c "
                       "ON c.concept_id = v.visit_concept_id WHERE person_id = 5111").fetchall()
    finally:
        con.close()
    text = _text_of(texts, PERSON)
    conditions = text.split("Conditions:\n")[1].split("\nDrugs:")[0].splitlines()
    assert [ln.split(":")[0][2:] for ln in conditions] == [r[0] for r in rows]
    for line, (name, n, days) in zip(conditions, rows):
        assert (f"{n} times" in line) == (n > 1)
        assert days // 365 < 2 or f"{days // 365} years before" in line
    assert stay == [(1, "Inpatient Visit")]
    assert "- Inpatient Visit: 4 years before, length of stay 1 day" in text


def test_grouped_by_visit(eunomia_events, eunomia_db, index):
    one = index.filter(pa.compute.equal(index["subject_id"], PERSON))
    got = serialize(eunomia_events, one, cdm=eunomia_db, group="visit")
    assert got.texts["text"][0].as_py().startswith(EXPECTED_VISIT_HEAD)
    assert got.provenance["group"] == "visit"


def test_deterministic(eunomia_events, eunomia_db, index, texts):
    again = serialize(eunomia_events, index, cdm=eunomia_db)
    assert again.texts.equals(texts.texts)
    assert "\n".join(again.texts["text"].to_pylist()).encode() == "\n".join(texts.texts["text"].to_pylist()).encode()
    a = serialize(eunomia_events, index, cdm=eunomia_db, group="visit", max_chars=600)
    b = serialize(eunomia_events, index, cdm=eunomia_db, group="visit", max_chars=600)
    assert a.texts.equals(b.texts)


def _planted(eunomia_events, tmp_path, rows: list[dict]) -> EventDir:
    copy = tmp_path / "events"
    shutil.copytree(eunomia_events.path, copy)
    pq.write_table(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA), copy / "events" / "zz-planted.parquet")
    return EventDir.open(copy)


def test_censoring_later_events_change_nothing(eunomia_events, eunomia_db, index, texts, tmp_path):
    ev = {"subject_id": PERSON, "code": "SNOMED/74474003", "domain": "condition", "numeric_value": None, "visit_id": None,
              "concept_id": 192671, "end_time": None, "source_code": None, "source_concept_id": None}
    planted = _planted(eunomia_events, tmp_path, [
        {**ev, "time": datetime(1984, 12, 10)},                 # on the index day: not strictly before
        {**ev, "time": datetime(1984, 12, 10, 23, 59)},
        {**ev, "time": datetime(1990, 1, 1)}])
    got = serialize(planted, index, cdm=eunomia_db)
    assert got.texts.equals(texts.texts)
    assert got.coverage == texts.coverage
    inclusive = serialize(planted, index.filter(pa.compute.equal(index["subject_id"], PERSON)), cdm=eunomia_db,
                          inclusive=True)
    assert "- Gastrointestinal hemorrhage: 3 times, last same day" in inclusive.texts["text"][0].as_py()


def test_cdm_source_censors_in_sql(eunomia_db, index, texts, tmp_path):
    got = serialize(eunomia_db, index, work_dir=tmp_path / "work")
    assert got.texts.equals(texts.texts)
    assert got.provenance["censoring"] == "extraction SQL"


_WHEN = re.compile(r"(same day|(\d+) (day|days|week|weeks|month|months|year|years) before)")
_DAYS = {"day": 1, "days": 1, "week": 7, "weeks": 7, "month": 30, "months": 30, "year": 365, "years": 365}


def _days(line: str) -> int:
    m = _WHEN.search(line)
    return 0 if m.group(1) == "same day" else int(m.group(2)) * _DAYS[m.group(3)]


def test_truncation_keeps_header_and_newest_lines(eunomia_events, eunomia_db, index, texts):
    cut = serialize(eunomia_events, index, cdm=eunomia_db, max_chars=400)
    assert cut.provenance["truncated"] == int(pa.compute.sum(cut.texts["truncated"]).as_py()) > 0
    for full, short, n, trunc in zip(texts.texts["text"].to_pylist(), cut.texts["text"].to_pylist(),
                                     cut.texts["n_lines"].to_pylist(), cut.texts["truncated"].to_pylist()):
        header = full.split("\n")[0]
        assert short.split("\n")[0] == header
        assert len(short) <= 400 or short == header
        full_lines = [ln for ln in full.split("\n") if ln.startswith("- ")]
        kept = [ln for ln in short.split("\n") if ln.startswith("- ")]
        assert len(kept) == n and set(kept) <= set(full_lines) and trunc == (len(kept) < len(full_lines))
        dropped = [ln for ln in full_lines if ln not in kept]
        if kept and dropped:
            assert max(_days(ln) for ln in kept) <= min(_days(ln) for ln in dropped)
    # by visit, the newest lines are the text's beginning: a truncated text is a prefix of the full one
    full = serialize(eunomia_events, index, cdm=eunomia_db, group="visit")
    short = serialize(eunomia_events, index, cdm=eunomia_db, group="visit", max_chars=300)
    for f, s in zip(full.texts["text"].to_pylist(), short.texts["text"].to_pylist()):
        assert f.startswith(s) and (len(f) == len(s) or f[len(s)] == "\n")


def test_truncation_by_tokens(eunomia_events, eunomia_db, index, texts):
    words = lambda s: len(s.split())
    got = serialize(eunomia_events, index, cdm=eunomia_db, max_tokens=60, count_tokens=words)
    assert max(words(t) for t, n in zip(got.texts["text"].to_pylist(), got.texts["n_lines"].to_pylist()) if n) <= 60
    one = got.texts.filter(pa.compute.equal(got.texts["subject_id"], PERSON))
    kept = one["text"][0].as_py()
    assert kept.startswith("Age at index: 39 years. Sex: male.\nConditions:\n- Myocardial infarction: 7 days before")
    assert one["truncated"][0].as_py() and "Sputum examination" not in kept      # the oldest line went first
    # the token path assembles exactly what SQL would have for the same number of lines
    untouched = [t for t, tr in zip(got.texts["text"].to_pylist(), got.texts["truncated"].to_pylist()) if not tr]
    assert set(untouched) <= set(texts.texts["text"].to_pylist())


def test_coverage_and_descriptions(eunomia_events, eunomia_db, index, texts, tmp_path):
    con = duckdb.connect()
    ev = eunomia_events.read_events(["subject_id", "time", "code"])
    con.register("ev", ev)
    con.register("ix", index)
    n_events, n_codes = con.execute("SELECT count(*), count(DISTINCT code) FROM ev JOIN ix USING (subject_id) "
                                    "WHERE ev.time < ix.index_date").fetchone()
    assert texts.coverage == {"events": n_events, "events_described": n_events, "event_share": 1.0,
                              "codes": n_codes, "codes_described": n_codes, "code_share": 1.0,
                              "events_by_origin": {"source": n_events}}
    # the names are the concept table's
    cdm = duckdb.connect(str(eunomia_db), read_only=True)
    name = cdm.execute("SELECT concept_name FROM concept WHERE vocabulary_id = 'SNOMED' AND concept_code = '74474003'"
                       ).fetchone()[0]
    cdm.close()
    assert name == "Gastrointestinal hemorrhage" and f"- {name}: 4 years before" in _text_of(texts, PERSON)
    one = index.filter(pa.compute.equal(index["subject_id"], PERSON))
    # the event directory describes itself (codes.parquet, concept_name written at extraction): no CDM needed
    own = serialize(eunomia_events, one)
    assert own.texts["text"][0].as_py() == _text_of(texts, PERSON) and own.coverage["code_share"] == 1.0
    # without codes.parquet and without a CDM every code stands for itself and nothing is described
    shutil.copytree(eunomia_events.path, tmp_path / "ev")
    (tmp_path / "ev" / "codes.parquet").unlink()
    bare = serialize(tmp_path / "ev", one)
    assert "- SNOMED/74474003: 4 years before" in bare.texts["text"][0].as_py()
    assert bare.coverage["event_share"] == 0.0 and bare.coverage["codes_described"] == 0


def test_code_without_description_falls_back_to_the_code(eunomia_events, eunomia_db, index, tmp_path):
    ev = {"subject_id": PERSON, "numeric_value": None, "visit_id": None, "concept_id": None, "end_time": None,
              "source_code": None, "source_concept_id": None, "time": datetime(1984, 11, 1)}
    planted = _planted(eunomia_events, tmp_path, [
        {**ev, "code": "LOCAL/xyz-1", "domain": "condition"},
        {**ev, "code": "CALIBER/Asthma", "domain": "condition"},
        {**ev, "code": "LOCAL/bp", "domain": "measurement", "numeric_value": 132.5, "unit": "mm[Hg]"},
        {**ev, "code": "LOCAL/bp", "domain": "measurement", "numeric_value": 141.0, "time": datetime(1984, 11, 20),
         "unit": "mm[Hg]"},
        {**ev, "code": "LOCAL/temp", "domain": "measurement", "numeric_value": 37.25}])
    one = index.filter(pa.compute.equal(index["subject_id"], PERSON))
    got = serialize(planted, one, cdm=eunomia_db, descriptions={"LOCAL/bp": "Systolic blood pressure"})
    text = got.texts["text"][0].as_py()
    assert "- LOCAL/xyz-1: 5 weeks before" in text
    assert "- Asthma: 5 weeks before" in text
    assert "- Systolic blood pressure: 2 times, last 2 weeks before, last value 141 mm[Hg]\n" in text
    assert "- LOCAL/temp: 5 weeks before, value 37.25\n" in text + "\n"         # no unit given: none written
    assert got.coverage["codes"] == 23 and got.coverage["codes_described"] == 21
    assert got.coverage["events"] == 29 and got.coverage["events_described"] == 27
    # the event directory's own names first (codes.parquet), then CALIBER's; the caller's win over both
    assert got.coverage["events_by_origin"] == {"caliber": 1, "source": 24, "given": 2}


def test_dump_text_warns(texts, tmp_path):
    with pytest.warns(UserWarning, match="patient data"):
        path = dump_text(texts, tmp_path / "dump")
    assert pq.read_table(path).equals(texts.texts)


def test_bad_input(eunomia_events, index):
    with pytest.raises(ValueError, match="group must be one of"):
        serialize(eunomia_events, index, group="day")
    with pytest.raises(ValueError, match="max_tokens needs count_tokens"):
        serialize(eunomia_events, index, max_tokens=100)
    with pytest.raises(ValueError, match="max_chars must be a positive"):
        serialize(eunomia_events, index, max_chars=0)
    with pytest.raises(ValueError, match="'index_date'.*missing"):
        serialize(eunomia_events, index.drop_columns(["index_date"]))
    with pytest.raises(ValueError, match="descriptions: column 'description' is missing"):
        serialize(eunomia_events, index, descriptions=pa.table({"code": ["X/1"]}))


def test_subject_not_in_source(eunomia_events, index):
    extra = pa.table({"cohort_definition_id": [1], "subject_id": [10 ** 12], "index_date": [datetime(2000, 1, 1)]},
                     schema=INDEX_SCHEMA)
    got = serialize(eunomia_events, extra)
    assert got.texts["text"].to_pylist() == ["Age at index: unknown. Sex: unknown."]
    assert got.texts["n_lines"].to_pylist() == [0] and got.provenance["subject not in source"] == 1


def test_time_words_at_their_boundaries():
    from omop_behrt.text.serialize import _sql
    con = duckdb.connect()
    con.register("events", EVENTS_SCHEMA.empty_table())
    con.register("idx", pa.table({"row_id": pa.array([], pa.int64()), "subject_id": pa.array([], pa.int64()),
                                  "index_date": pa.array([], pa.timestamp("us")), "cut": pa.array([], pa.timestamp("us"))}))
    for stmt in _sql("macros.sql"):
        con.execute(stmt)
    days = [0, 1, 2, 13, 14, 59, 60, 364, 365, 729, 730, 3652]
    got = [con.execute("SELECT before_words($d)", {"d": d}).fetchone()[0] for d in days]
    assert got == ["same day", "1 day before", "2 days before", "13 days before", "2 weeks before", "8 weeks before",
                   "2 months before", "11 months before", "1 year before", "1 year before", "2 years before",
                   "10 years before"]
    stays = [con.execute("SELECT stay_words($d)", {"d": d}).fetchone()[0] for d in (None, 0, 1, 4)]
    assert stays == ["", ", length of stay under 1 day", ", length of stay 1 day", ", length of stay 4 days"]

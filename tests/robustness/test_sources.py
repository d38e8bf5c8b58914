"""The reading layer on messy real-world sources: folders of CSV/Parquet exports, DuckDB files, PostgreSQL.

Fixtures are built from the Synthea 1k OMOP 5.4 export (tests/data/synthea_omop_1k): a CDM 5.3-style copy
whose month/day of birth are empty in every row, a header-only CONCEPT_ANCESTOR.csv, stray files, text that
does not parse, invalid UTF-8, a truncated .csv.gz, truncated and damaged Parquet files.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omop_behrt.db.cdm import OmopCdm, ddl_types, detect_version
from omop_behrt.db.database import Database, SourceError

SYNTHEA = Path(__file__).parents[1] / "data" / "synthea_omop_1k"
RENAMED_54_TO_53 = {"admitted_from_concept_id": "admitting_source_concept_id",
                    "admitted_from_source_value": "admitting_source_value",
                    "discharged_to_concept_id": "discharge_to_concept_id",
                    "discharged_to_source_value": "discharge_to_source_value"}


def _text(table: str) -> str:
    """A read_csv over one Synthea export, every column as text."""
    return f"read_csv('{SYNTHEA / (table.upper() + '.csv.gz')}', header=true, all_varchar=true)"


def _copy_csv(con, table: str, dst: Path, select: str = "*") -> None:
    con.execute(f"COPY (SELECT {select} FROM {_text(table)}) TO '{dst}' (HEADER)")


@pytest.fixture(scope="module")
def export53(tmp_path_factory) -> Path:
    """A CDM 5.3-style CSV export: 5.3 visit columns, month/day_of_birth empty in every row, stray files."""
    d = tmp_path_factory.mktemp("cdm53")
    con = duckdb.connect()
    for f in sorted(SYNTHEA.glob("*.csv.gz")):
        table = f.name.split(".")[0].lower()
        if table == "person":
            _copy_csv(con, table, d / "person.csv", "* REPLACE (NULL AS month_of_birth, NULL AS day_of_birth)")
        elif table == "visit_occurrence":
            cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {_text(table)}").fetchall()]
            sel = ", ".join(f'"{c}" AS "{RENAMED_54_TO_53.get(c, c)}"' for c in cols)
            _copy_csv(con, table, d / "VISIT_OCCURRENCE.csv", sel)
        else:
            shutil.copy(f, d / f.name)
    (d / "CONCEPT_ANCESTOR.csv").write_text("ancestor_concept_id,descendant_concept_id,min_levels_of_separation,"
                                            "max_levels_of_separation\n")
    shutil.copy(d / "person.csv", d / "condition_occurrence.csv~")
    (d / "notes.txt").write_text("exported by hand\n")
    (d / "person.json~").write_text("{}")
    (d / "condition.csv.bak").write_text("a,b\n1,2\n")
    (d / "2020 extract.csv").write_text("a\n1\n")
    (d / "old").mkdir()
    (d / "old" / "readme.txt").write_text("nothing here")
    return d


# -- a: typed by the official DDL, not by sniffing ----------------------------------------------------
def test_ddl_types_shipped():
    """Both DDL versions ship in the package; 5.4 renamed the visit source/destination columns."""
    t53, t54 = ddl_types("5.3"), ddl_types("5.4")
    assert len(t53) == 37 and len(t54) == 39
    assert t54["person"]["month_of_birth"] == "integer" and t54["person"]["birth_datetime"] == "timestamp"
    assert t54["measurement"]["value_as_number"] == "number" and t54["condition_occurrence"][
        "condition_start_date"] == "date" and t54["concept"]["concept_code"] == "text"
    assert "admitting_source_concept_id" in t53["visit_occurrence"]
    assert "admitted_from_concept_id" in t54["visit_occurrence"]
    assert detect_version(None, ["ADMITTING_SOURCE_CONCEPT_ID"]) == "5.3"
    assert detect_version("v5.3.1", ["admitted_from_concept_id"]) == "5.3"   # cdm_source wins
    assert detect_version(None, []) == "5.4"


def test_cdm53_export_with_empty_birth_month_is_typed(export53):
    """Issue: month/day_of_birth empty in every row were sniffed as text; the persons query then failed."""
    sniffed = duckdb.sql(f"DESCRIBE SELECT * FROM read_csv('{export53 / 'person.csv'}', header=true, "
                         f"sample_size=-1, nullstr='')").fetchall()
    assert {r[0]: r[1] for r in sniffed}["month_of_birth"] == "VARCHAR"       # the trap a sniffer falls in
    cdm = OmopCdm(export53)
    assert cdm.cdm_version == "5.3"
    assert cdm.column_type("person", "month_of_birth") == "BIGINT"
    assert cdm.column_type("visit_occurrence", "admitting_source_concept_id") == "BIGINT"
    assert cdm.column_type("person", "birth_datetime") == "TIMESTAMP"
    assert cdm.column_type("person", "person_source_value") == "VARCHAR"
    # the expression that failed ("Cannot mix values of type VARCHAR and INTEGER_LITERAL in COALESCE")
    t = cdm.db.query("SELECT COUNT(*) AS n, COUNT(month_of_birth) AS m, "
                     "SUM(COALESCE(NULLIF(month_of_birth, 0), 7)) AS s FROM person")
    assert t.to_pylist() == [{"n": 101, "m": 0, "s": 707}]
    assert cdm.db.query(f"SELECT {cdm.cast_errors('person', 'p')} AS e FROM person p WHERE "
                        f"{cdm.cast_errors('person', 'p')} IS NOT NULL").num_rows == 0


def test_cdm53_export_extracts_end_to_end(export53, tmp_path):
    """The whole extraction runs on the 5.3 export and reads every person and event row."""
    from omop_behrt.adapters import omop
    s = omop.extract(export53, tmp_path / "ev", progress=False)
    assert s.cdm_version == "5.3"
    assert s.persons == 101
    assert s.events_in == s.events_out + s.quarantined
    assert s.events_by_domain["condition"] == 757 and s.events_by_domain["visit"] == 2946


def test_header_only_table_is_typed_and_empty(export53):
    """Issue: a header-only CONCEPT_ANCESTOR.csv crashed --vocab ancestor; now a typed, empty table."""
    cdm = OmopCdm(export53)
    assert cdm.has_table("concept_ancestor")
    types = {c: cdm.column_type("concept_ancestor", c) for c in cdm.columns("concept_ancestor")}
    assert types == {"ancestor_concept_id": "BIGINT", "descendant_concept_id": "BIGINT",
                     "min_levels_of_separation": "BIGINT", "max_levels_of_separation": "BIGINT"}
    joined = cdm.db.query(f"SELECT COUNT(*) AS n FROM {cdm.qtable('concept_ancestor')} a "
                          f"JOIN {cdm.qtable('concept')} c ON c.concept_id = a.descendant_concept_id")
    assert joined["n"].to_pylist() == [0]
    from omop_behrt.vocab.concepts import ancestors
    assert ancestors(cdm, [1, 2]).num_rows == 0


def test_skipped_files_are_listed(export53):
    """Issue: files the reader does not take were skipped without a word; now each is listed with why."""
    db = Database.connect(export53)
    skipped = {s["file"]: s["reason"] for s in db.skipped_files}
    assert set(skipped) == {"condition_occurrence.csv~", "notes.txt", "person.json~", "condition.csv.bak",
                            "2020 extract.csv", "old"}
    assert skipped["condition_occurrence.csv~"].startswith("not a table export (expected TABLE.csv")
    assert skipped["2020 extract.csv"] == "'2020 extract' is not a table name"
    assert skipped["old"] == "a folder without .parquet files"
    cdm = OmopCdm(db)
    lines = [w for w in cdm.warnings if " not read: " in w]
    assert len(lines) == 6 and any("file notes.txt not read: not a table export" in w for w in lines)
    # the tables it did take
    assert {"person", "visit_occurrence", "concept_ancestor", "condition_occurrence"} <= set(db.tables("main"))


def test_duplicate_table_export_is_an_error(tmp_path):
    """Two exports of one table (person.csv and PERSON.csv.gz): which one is meant is unknowable; say so."""
    shutil.copy(SYNTHEA / "PERSON.csv.gz", tmp_path / "PERSON.csv.gz")
    duckdb.execute(f"COPY (SELECT * FROM {_text('person')}) TO '{tmp_path / 'person.csv'}' (HEADER)")
    with pytest.raises(SourceError, match=r"table person is exported twice \(PERSON\.csv\.gz, person\.csv\)"):
        Database.connect(tmp_path)


# -- bad values: NULL from cast, a reason from cast_errors, on every engine -------------------------------
BAD_PERSON = {"person_id": "abc", "year_of_birth": "19x0"}
BAD_CONDITION = {"condition_start_date": "2021-13-45", "condition_concept_id": "x12",
                 "condition_end_date": "2021-02-30", "condition_start_datetime": "2021-03-17 25:00:00"}
EXPECTED_PERSON = "person_id 'abc' is not an integer; year_of_birth '19x0' is not an integer"
EXPECTED_CONDITION = ("condition_concept_id 'x12' is not an integer; "
                      "condition_start_date '2021-13-45' is not a date (YYYY-MM-DD); "
                      "condition_start_datetime '2021-03-17 25:00:00' is not a timestamp (YYYY-MM-DD HH:MM:SS); "
                      "condition_end_date '2021-02-30' is not a date (YYYY-MM-DD)")


def _replace(table: str, key: str, key_value: str, bad: dict) -> str:
    """SELECT over a Synthea table (all text) with one row's columns replaced by bad values."""
    repl = ", ".join(f"CASE WHEN {key} = '{key_value}' THEN '{v}' ELSE {c} END AS {c}" for c, v in bad.items())
    return f"SELECT * REPLACE ({repl}) FROM {_text(table)}"


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> Path:
    """A 5.4 CSV export with one person and one condition row holding text that does not parse."""
    d = tmp_path_factory.mktemp("messy")
    con = duckdb.connect()
    for f in sorted(SYNTHEA.glob("*.csv.gz")):
        shutil.copy(f, d / f.name)
    (d / "PERSON.csv.gz").unlink()
    (d / "CONDITION_OCCURRENCE.csv.gz").unlink()
    con.execute(f"COPY ({_replace('person', 'person_id', '1', BAD_PERSON)}) TO '{d / 'person.csv'}' (HEADER)")
    con.execute(f"COPY ({_replace('condition_occurrence', 'condition_occurrence_id', '1', BAD_CONDITION)}) "
                f"TO '{d / 'condition_occurrence.csv'}' (HEADER)")
    return d


@pytest.fixture(scope="module")
def messy_duckdb(messy_folder, tmp_path_factory) -> Path:
    """The messy export loaded into a DuckDB file as VARCHAR columns (how many sites land CSVs)."""
    path = tmp_path_factory.mktemp("messy_db") / "cdm.duckdb"
    con = duckdb.connect(str(path))
    for table in ("person", "condition_occurrence", "concept", "visit_occurrence"):
        f = next(p for p in messy_folder.iterdir() if p.name.lower().split(".")[0] == table)
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_csv('{f}', header=true, all_varchar=true)")
    con.close()
    return path


def _reasons(cdm: OmopCdm) -> dict[str, list]:
    """Per table, the (row id, cast_errors reason) of every row with a reason, and the row count."""
    out = {}
    for table, key in (("person", "person_source_value"), ("condition_occurrence", "condition_occurrence_id")):
        err = cdm.cast_errors(table, "t")
        rows = cdm.db.query(f"SELECT CAST({cdm.col(table, key, 't')} AS VARCHAR) AS k, {err} AS reason "
                            f"FROM {cdm.qtable(table)} t").to_pylist()
        out[table] = sorted((r["k"], r["reason"]) for r in rows if r["reason"] is not None)
        out[table + " rows"] = len(rows)
    # cast gives NULL, not an error, and keeps the good rows
    t = "condition_occurrence"
    out["cast"] = cdm.db.query(
        f"SELECT COUNT(*) AS n, COUNT({cdm.cast(cdm.col(t, 'condition_start_date', 'c'), 'DATE')}) AS dates, "
        f"COUNT({cdm.cast(cdm.col(t, 'condition_concept_id', 'c'), 'BIGINT')}) AS concepts, "
        f"COUNT({cdm.cast(cdm.col(t, 'condition_start_datetime', 'c'), 'TIMESTAMP')}) AS times "
        f"FROM {cdm.qtable(t)} c").to_pylist()
    return out


def _person_key() -> str:
    """person_source_value of the row whose person_id was replaced by 'abc'."""
    return duckdb.sql(f"SELECT person_source_value FROM {_text('person')} WHERE person_id = '1'").fetchall()[0][0]


def _expected() -> dict:
    return {"person": [(_person_key(), EXPECTED_PERSON)], "person rows": 101,
            "condition_occurrence": [("1", EXPECTED_CONDITION)], "condition_occurrence rows": 757,
            "cast": [{"n": 757, "dates": 756, "concepts": 756, "times": 756}]}


def test_bad_values_in_folder_export(messy_folder):
    """Text in person_id / a concept id, a date 2021-13-45 or 2021-02-30: NULL and a reason, never an abort."""
    cdm = OmopCdm(messy_folder)
    assert _reasons(cdm) == _expected()
    # raw(): the text as read, so a value that did not parse is not mistaken for a missing one
    t = cdm.db.query(f"SELECT {cdm.raw('person', 'person_id', 'p')} AS raw, {cdm.col('person', 'person_id', 'p')} "
                     f"AS typed FROM {cdm.qtable('person')} p WHERE {cdm.col('person', 'person_id', 'p')} IS NULL")
    assert t.to_pylist() == [{"raw": "abc", "typed": None}]
    assert cdm.raw("person", "person_source_value", "p") == cdm.col("person", "person_source_value", "p")
    assert cdm.cast_errors("person", "p", ["gender_concept_id"]) != "CAST(NULL AS VARCHAR)"


def test_bad_values_in_duckdb_text_columns(messy_duckdb):
    """The same export landed in a DuckDB file as VARCHAR columns: the same reasons."""
    assert _reasons(OmopCdm(messy_duckdb)) == _expected()


def test_typed_cdm_adds_no_checks(tmp_path):
    """On a CDM stored with the DDL's types cast_errors is a NULL constant and cast a plain TRY_CAST."""
    import sys
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from cdm_fixtures import build_duckdb_cdm
    cdm = OmopCdm(build_duckdb_cdm(tmp_path / "typed.duckdb", "5.4", schema="cdm"), "cdm")
    assert cdm.cast_errors("person", "p") == "CAST(NULL AS VARCHAR)"
    assert cdm.cast_errors("condition_occurrence") == "CAST(NULL AS VARCHAR)"


def _load_text_tables(url: str, schema: str, folder: Path, tables: list[str]) -> None:
    """Copy tables of a folder export into PostgreSQL with every column ``text`` (a raw landing zone)."""
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    con = duckdb.connect()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(f'CREATE SCHEMA "{schema}"')
        for table in tables:
            f = next(p for p in folder.iterdir() if p.name.lower().split(".")[0] == table)
            rel = con.sql(f"SELECT * FROM read_csv('{f}', header=true, all_varchar=true)")
            cur.execute(f'CREATE TABLE "{schema}"."{table}" ({", ".join(c + " text" for c in rel.columns)})')
            with cur.copy(f'COPY "{schema}"."{table}" FROM STDIN') as cp:
                for row in rel.fetchall():
                    cp.write_row(row)
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


@pytest.mark.postgres
def test_bad_values_in_postgres_text_columns(pg_url, pg_schema, messy_folder):
    """PostgreSQL text columns: plain CAST aborted the whole query on 'abc' or '2021-13-45'; now as DuckDB."""
    _load_text_tables(pg_url, pg_schema, messy_folder, ["person", "condition_occurrence", "concept",
                                                        "visit_occurrence"])
    cdm = OmopCdm(pg_url, pg_schema)
    assert cdm.column_type("person", "person_id") == "text"
    assert _reasons(cdm) == _expected()


# every form both engines must read alike (value -> parsed, or None where it does not parse)
PARITY = {
    "date": ["2021-03-17", "2021-13-45", "2021-02-30", "2020-02-29", "2019-02-29", "2021-04-31", " 2021-03-17 ",
             "2021-3-7", "2021-03-17 10:00:00", "2021-03-17T10:00:00Z", "abc", "20210317", "2021-03-17x", "",
             "2021-00-10", "2021-01-00", None],
    "timestamp": ["2021-03-17 10:00:00", "2021-03-17T10:00", "2021-03-17", "2021-03-17 25:00:00",
                  "2021-03-17 10:61:00", "2021-03-17 10:00:00.123456", " 2021-03-17 10:00:00 ", "abc", None],
    "integer": ["12", "abc", "12.0", " 7 ", "-3", "+5", "99999999999999999999", "", "1.5x", None],
    "number": ["1.5", "1e3", "abc", ".5", "-2.", "1.2.3", " 4 ", "1e400x", None],
}
_TARGET = {"date": ("condition_start_date", "DATE"), "timestamp": ("condition_start_datetime", "TIMESTAMP"),
           "integer": ("condition_concept_id", "BIGINT"), "number": ("condition_source_concept_id", "DOUBLE PRECISION")}


def _parity_rows() -> pa.Table:
    n = max(len(v) for v in PARITY.values())
    cols = {"condition_occurrence_id": [str(i) for i in range(n)], "person_id": ["1"] * n}
    for kind, values in PARITY.items():
        cols[_TARGET[kind][0]] = values + [None] * (n - len(values))
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def _parity(cdm: OmopCdm) -> list[dict]:
    t = "condition_occurrence"
    sel = ", ".join(f"CAST({cdm.cast(cdm.col(t, c, 'c'), sqltype)} AS VARCHAR) AS {kind}"
                    for kind, (c, sqltype) in _TARGET.items())
    return cdm.db.query(f"SELECT CAST(c.condition_occurrence_id AS INTEGER) AS i, {sel}, "
                        f"{cdm.cast_errors(t, 'c')} AS reason FROM {cdm.qtable(t)} c ORDER BY 1").to_pylist()


def _normalise(rows: list[dict]) -> list[dict]:
    """Values as text the two engines spell alike (DuckDB '12.0' vs PostgreSQL '12', 'T' vs ' ')."""
    def norm(v):
        if v is None:
            return None
        try:
            return float(v)
        except ValueError:
            return v.replace("T", " ")
    return [{k: norm(v) if k not in ("i", "reason") else v for k, v in r.items()} for r in rows]


@pytest.mark.postgres
def test_cast_parity_duckdb_postgres(pg_url, pg_schema, tmp_path):
    """Every form in PARITY parses (or not) alike on DuckDB TRY_CAST and the PostgreSQL guarded cast."""
    import sqlalchemy as sa
    rows = _parity_rows()
    path = tmp_path / "p.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE condition_occurrence AS SELECT * FROM rows")
    con.close()
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{pg_schema}"'))
        conn.execute(sa.text(f'CREATE TABLE "{pg_schema}".condition_occurrence '
                             f'({", ".join(c + " text" for c in rows.column_names)})'))
        conn.execute(sa.text(f'INSERT INTO "{pg_schema}".condition_occurrence VALUES '
                             f'({", ".join(":" + c for c in rows.column_names)})'), rows.to_pylist())
    engine.dispose()
    duck, pg = _parity(OmopCdm(path)), _parity(OmopCdm(pg_url, pg_schema))
    assert _normalise(duck) == _normalise(pg)
    assert duck[1]["date"] is None and duck[2]["date"] is None and duck[3]["date"] == "2020-02-29"
    assert duck[1]["reason"] == ("condition_start_date '2021-13-45' is not a date (YYYY-MM-DD); "
                                 "condition_concept_id 'abc' is not an integer")


# -- b: faults of a whole file: one SourceError naming the file ------------------------------------------
def _folder_with(tmp_path: Path, name: str, data: bytes) -> Path:
    d = tmp_path / "cdm"
    d.mkdir()
    shutil.copy(SYNTHEA / "PERSON.csv.gz", d / "PERSON.csv.gz")
    (d / name).write_bytes(data)
    return d


def _read_all(folder: Path, table: str) -> None:
    """Open the folder and read one table through (a fault may surface at either step)."""
    db = Database.connect(folder)
    for _ in db.stream(f'SELECT * FROM "{table}"', batch_rows=1000):
        pass


def _condition_lines(copies: int = 1) -> list[bytes]:
    lines = gzip.decompress((SYNTHEA / "CONDITION_OCCURRENCE.csv.gz").read_bytes()).rstrip(b"\n").split(b"\n")
    return lines[:1] + lines[1:] * copies


@pytest.mark.parametrize("copies,bad_line", [(1, 601), (40, 29_000)])
def test_invalid_utf8_line_names_file_and_line(tmp_path, copies, bad_line):
    """Invalid UTF-8 in the sniffed head of the file (caught at open) or far below it (caught while reading)."""
    lines = _condition_lines(copies)
    lines[bad_line - 1] = lines[bad_line - 1].replace(b",", b",caf\xe9", 1)
    d = _folder_with(tmp_path, "condition_occurrence.csv", b"\n".join(lines) + b"\n")
    with pytest.raises(SourceError) as e:
        _read_all(d, "condition_occurrence")
    msg = str(e.value)
    assert msg.startswith(f"{d / 'condition_occurrence.csv'}, line {bad_line}: invalid UTF-8"), msg
    assert "re-export it as UTF-8" in msg and "\n" not in msg


@pytest.mark.parametrize("copies", [1, 40])
def test_truncated_gzip_names_file(tmp_path, copies):
    data = gzip.compress(b"\n".join(_condition_lines(copies)) + b"\n")
    d = _folder_with(tmp_path, "CONDITION_OCCURRENCE.csv.gz", data[: len(data) * 3 // 4])
    with pytest.raises(SourceError) as e:
        _read_all(d, "condition_occurrence")
    assert str(e.value) == (f"{d / 'CONDITION_OCCURRENCE.csv.gz'}: IO Error: Unexpected end of GZIP stream; "
                            f"expected a complete gzip file: the copy looks truncated or damaged, copy it again")


@pytest.fixture
def person_parquet() -> pa.Table:
    return duckdb.sql(f"SELECT * FROM read_csv('{SYNTHEA / 'PERSON.csv.gz'}', header=true)").to_arrow_table()


def test_truncated_parquet_fails_at_open(tmp_path, person_parquet):
    d = tmp_path / "cdm"
    d.mkdir()
    pq.write_table(person_parquet, d / "person.parquet")
    data = (d / "person.parquet").read_bytes()
    (d / "person.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"person\.parquet: not a readable Parquet file \(.*magic bytes.*\); "
                                          r"expected a complete Parquet file"):
        Database.connect(d)


def test_damaged_parquet_page_names_row_group(tmp_path, person_parquet):
    d = tmp_path / "cdm"
    (d / "measurement").mkdir(parents=True)
    pq.write_table(person_parquet, d / "person.parquet")
    m = duckdb.sql(f"SELECT * FROM read_csv('{SYNTHEA / 'MEASUREMENT.csv.gz'}', header=true)").to_arrow_table()
    part = d / "measurement" / "part-0.parquet"
    pq.write_table(m, part, row_group_size=5000)
    meta = pq.read_metadata(part)
    assert meta.num_row_groups >= 3
    off = meta.row_group(1).column(0).data_page_offset
    data = bytearray(part.read_bytes())
    data[off: off + 64] = b"\xff" * 64
    part.write_bytes(bytes(data))
    cdm = OmopCdm(d)              # the footer is intact: opening works
    with pytest.raises(SourceError, match=r"part-0\.parquet, row group 1: .*copy or export it again"):
        cdm.db.query(f"SELECT SUM(measurement_id) FROM {cdm.qtable('measurement')}")


def test_parquet_export_keeps_types_and_casts_text(tmp_path, person_parquet):
    """Parquet keeps its types; a DDL column stored as text is cast (and checked) like a CSV column."""
    d = tmp_path / "cdm"
    d.mkdir()
    text = person_parquet.set_column(0, "person_id", person_parquet["person_id"].cast(pa.string()))
    text = text.set_column(0, "person_id", pa.array(["abc"] + text["person_id"].to_pylist()[1:]))
    pq.write_table(text.rename_columns([c.upper() for c in text.column_names]), d / "PERSON.parquet")
    cdm = OmopCdm(d)
    assert cdm.column_type("person", "person_id") == "BIGINT"
    assert cdm.column_type("person", "year_of_birth") == "BIGINT"     # stored BIGINT, kept
    r = cdm.db.query(f"SELECT {cdm.cast_errors('person', 'p')} AS e FROM {cdm.qtable('person')} p").to_pylist()
    assert [x["e"] for x in r if x["e"]] == ["person_id 'abc' is not an integer"] and len(r) == 101


# -- c: a file that is not a database -----------------------------------------------------------------
def test_json_file_says_what_was_expected(tmp_path):
    f = tmp_path / "data.json"
    f.write_text('{"resourceType": "Nothing"}')
    with pytest.raises(SourceError) as e:
        Database.connect(f)
    assert str(e.value) == (f"{f} is not a DuckDB database, a folder of CDM exports or a SQLAlchemy URL; "
                            f"for FHIR data pass a Bundle/NDJSON file or folder (--format fhir)")

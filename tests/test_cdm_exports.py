"""CDM table exports (CSV, CSV.gz, ';'-separated spreadsheets) as real sites write them: dates and numbers that
are not ISO / not numbers are read where their format is certain, and quarantined or noted (never guessed) where not.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
import shutil

import duckdb
import pyarrow.compute as pc
import pytest

from omop_behrt import EventDir
from omop_behrt.adapters import omop


def test_unparseable_dates_in_exports(synthea_dir, tmp_path):
    """A CSV export with a date that is not a date: quarantined, with the column named."""
    folder = tmp_path / "cdm"
    shutil.copytree(synthea_dir, folder)
    con = duckdb.connect()
    src = folder / "CONDITION_OCCURRENCE.csv.gz"
    con.execute(f"""COPY (SELECT * REPLACE (CASE WHEN condition_occurrence_id = '1' THEN 'not-a-date'
                    ELSE condition_start_date END AS condition_start_date)
                    FROM read_csv('{src}', header=true, all_varchar=true))
                    TO '{folder}/condition_occurrence.csv' (HEADER)""")
    src.unlink()
    s = omop.extract(folder, tmp_path / "ev", progress=False)
    assert s.quarantined_by_reason == {
        "condition_occurrence: condition_start_date 'aaa-a-aaaa' is not a date (YYYY-MM-DD)": 1,
        "device_exposure: device_exposure_start_date before birth": 108}
    assert s.events_by_domain["condition"] == 756


def test_dates_in_a_format_that_is_not_certain_are_one_summary_line(synthea_dir, tmp_path):
    """Every condition date written DD.MM.YY (two-digit years: 1920 or 2020 cannot be told): each row is
    quarantined with its value, and the summary (printed, --json) has one line for the column, by the values'
    shape, not one per date read."""
    folder = tmp_path / "cdm"
    shutil.copytree(synthea_dir, folder)
    src = folder / "CONDITION_OCCURRENCE.csv.gz"
    text = gzip.decompress(src.read_bytes()).decode()
    (folder / "condition_occurrence.csv").write_text(re.sub(r"\d\d(\d\d)-(\d{2})-(\d{2})", r"\3.\2.\1", text))
    src.unlink()
    s = omop.extract(folder, tmp_path / "ev", progress=False)
    mine = {k: n for k, n in s.quarantined_by_reason.items() if k.startswith("condition_occurrence")}
    assert mine == {"condition_occurrence: condition_start_date '99.99.99' is not a date (YYYY-MM-DD)": 757}
    q = EventDir.open(tmp_path / "ev").quarantine().to_pylist()
    rows = [r for r in q if r["source"] == "condition_occurrence"]
    assert sum(mine.values()) == len(rows) > 700 and "condition" not in s.events_by_domain
    assert re.match(r"condition_start_date '\d\d\.\d\d\.\d\d' is not a date", rows[0]["reason"])
    assert "'99.99.99'" in s.table()
    assert not any("dates read as" in w for w in s.warnings)


def _rewrite_dates(src, dst, order: str, sep: str = ",", where=None) -> int:
    """``src`` (a CSV.gz export) written to ``dst`` with every date and timestamp in ``order`` (e.g. "%d.%m.%Y"),
    fields separated by ``sep``; ``where(row)``: the rows kept. Returns the rows written."""
    import datetime as dt
    rows = list(csv.reader(io.StringIO(gzip.decompress(src.read_bytes()).decode())))
    out, n = io.StringIO(), 0
    w = csv.writer(out, delimiter=sep)
    w.writerow(rows[0])
    for r in rows[1:]:
        if where is not None and not where(dict(zip(rows[0], r))):
            continue
        for i, v in enumerate(r):
            if re.fullmatch(r"\d{4}-\d\d-\d\d", v):
                r[i] = dt.date.fromisoformat(v).strftime(order)
            elif re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", v):
                r[i] = dt.datetime.fromisoformat(v).strftime(order + " %H:%M:%S")
        w.writerow(r)
        n += 1
    dst.write_text(out.getvalue())
    return n


@pytest.mark.parametrize("order,sep,shown", [("%m/%d/%Y", ",", "MM/DD/YYYY"), ("%d.%m.%Y", ";", "DD.MM.YYYY"),
                                             ("%d/%m/%Y", "\t", "DD/MM/YYYY")])
def test_exports_with_day_first_or_month_first_dates_extract_as_iso_ones(synthea_dir, tmp_path, order, sep, shown):
    """A US export (MM/DD/YYYY), a European spreadsheet (';' fields, DD.MM.YYYY dates, DD.MM.YYYY HH:MM:SS
    datetimes) and a tab-separated DD/MM/YYYY one: the file's format is read (the first rows have days above 12,
    so the order is certain), giving the events of the ISO export, and said once per file."""
    folder = tmp_path / "cdm"
    shutil.copytree(synthea_dir, folder)
    for name in ("CONDITION_OCCURRENCE", "VISIT_OCCURRENCE", "PERSON"):
        _rewrite_dates(folder / f"{name}.csv.gz", folder / f"{name.lower()}.csv", order, sep)
        (folder / f"{name}.csv.gz").unlink()
    s = omop.extract(folder, tmp_path / "ev", progress=False)
    ref = omop.extract(synthea_dir, tmp_path / "ref", progress=False)
    assert (s.events_out, s.quarantined, s.events_by_domain, s.notes) == \
        (ref.events_out, ref.quarantined, ref.events_by_domain, ref.notes)
    got, want = (EventDir.open(tmp_path / d).read_events() for d in ("ev", "ref"))
    keys = [(k, "ascending") for k in ("subject_id", "time", "code", "visit_id", "source_code")]
    assert got.sort_by(keys).equals(want.sort_by(keys))
    said = sorted(w for w in s.warnings if "dates read as" in w)
    assert said == [f"{n}.csv: dates read as {shown}, as the file writes them"
                    for n in ("condition_occurrence", "person", "visit_occurrence")]


def test_dates_that_read_day_first_and_month_first_alike_are_not_guessed(synthea_dir, tmp_path):
    """Conditions whose dates all have days <= 12, written DD/MM/YYYY: 03/04/2013 is 3 April or 4 March, and no
    row tells which. The dates are not guessed: a warning says why and what to do, and the rows are quarantined
    as not dates (counts in = out + quarantined)."""
    folder = tmp_path / "cdm"
    shutil.copytree(synthea_dir, folder)
    small = lambda r: all(int(r[c][8:10]) <= 12 for c in ("condition_start_date", "condition_end_date")  # noqa: E731
                          if r[c])
    n = _rewrite_dates(folder / "CONDITION_OCCURRENCE.csv.gz", folder / "condition_occurrence.csv", "%d/%m/%Y",
                       where=small)
    (folder / "CONDITION_OCCURRENCE.csv.gz").unlink()
    s = omop.extract(folder, tmp_path / "ev", progress=False)
    assert 100 < n < 757
    assert [w for w in s.warnings if "condition_occurrence.csv" in w] == [
        "condition_occurrence.csv: its dates read as DD/MM/YYYY and as MM/DD/YYYY alike (no day above 12 in the "
        "first 20,480 rows), so they are not read: rows without a date are quarantined. Re-export the dates as "
        "YYYY-MM-DD"]
    mine = {k: v for k, v in s.quarantined_by_reason.items() if k.startswith("condition_occurrence")}
    assert sum(mine.values()) == n and "condition" not in s.events_by_domain
    assert s.events_in == s.events_out + s.quarantined


def test_values_a_float32_cannot_hold_are_dropped_and_noted(synthea_dir, tmp_path):
    """value_as_number 1e300, -1e39, NaN and inf in an export: the events stay, without a value (numeric_value is
    a 32-bit float: they became inf and NaN, which MEDS writers and text serialisation passed on), counted in the
    notes."""
    import csv
    import io
    import pyarrow.compute as pc
    folder = tmp_path / "cdm"
    shutil.copytree(synthea_dir, folder)
    src = folder / "MEASUREMENT.csv.gz"
    rows = list(csv.reader(io.StringIO(gzip.decompress(src.read_bytes()).decode())))
    j = rows[0].index("value_as_number")
    for i, v in enumerate(("1e300", "-1e39", "NaN", "inf", "3.3e38"), 1):
        rows[i][j] = v
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    (folder / "measurement.csv").write_text(out.getvalue())
    src.unlink()
    s = omop.extract(folder, tmp_path / "ev", progress=False)
    ref = omop.extract(synthea_dir, tmp_path / "ref", progress=False)
    assert s.events_out == ref.events_out and s.quarantined == ref.quarantined
    assert s.notes["measurement: value_as_number not a 32-bit float (NaN, infinite or beyond +-3.4e38): "
                   "value dropped"] == 4
    v = EventDir.open(tmp_path / "ev").read_events()["numeric_value"]
    assert pc.sum(pc.is_inf(v)).as_py() == 0 and pc.sum(pc.is_nan(v)).as_py() == 0
    assert pc.max(v).as_py() == pytest.approx(3.3e38, rel=1e-6)


def test_semicolon_export_reads_decimal_commas_and_notes_values_that_are_not_numbers(synthea_dir, tmp_path):
    """A ';'-separated export, as spreadsheet tools write CSV where the comma is the decimal separator: ``7,5`` is
    read as 7.5 in every number column. Text that is no number (``<5``, ``1.234,5``) keeps its event without the
    value and is counted in the notes; before, such values vanished without a word."""
    import csv
    import io
    folder = tmp_path / "cdm"
    shutil.copytree(synthea_dir, folder)
    src = folder / "MEASUREMENT.csv.gz"
    rows = list(csv.reader(io.StringIO(gzip.decompress(src.read_bytes()).decode())))
    j = rows[0].index("value_as_number")
    valued = [i for i, r in enumerate(rows) if i and r[j]]
    for n, i in enumerate(valued[:40]):                      # 7 -> "7,25"; a few that no locale reads
        rows[i][j] = {0: "<5", 1: "1.234,5"}.get(n, f"{rows[i][j]},25")
    out = io.StringIO()
    csv.writer(out, delimiter=";").writerows(rows)
    (folder / "measurement.csv").write_text(out.getvalue())
    src.unlink()
    s = omop.extract(folder, tmp_path / "ev", progress=False)
    ref = omop.extract(synthea_dir, tmp_path / "ref", progress=False)
    assert (s.events_out, s.quarantined, s.events_by_domain) == (ref.events_out, ref.quarantined, ref.events_by_domain)
    assert s.notes == {**ref.notes, "measurement: value_as_number not a number: value dropped": 2}
    got = EventDir.open(tmp_path / "ev").read_events()["numeric_value"]
    want = EventDir.open(tmp_path / "ref").read_events()["numeric_value"]
    assert got.null_count == want.null_count + 2
    olds = [float(rows[i][j].replace(",25", "")) for i in valued[2:40]]
    dropped = [float(r[j]) for r in csv.reader(io.StringIO(gzip.decompress(
        (synthea_dir / "MEASUREMENT.csv.gz").read_bytes()).decode())) if r[j] not in ("", "value_as_number")][:2]
    assert pc.sum(got).as_py() == pytest.approx(pc.sum(want).as_py() + 0.25 * len(olds) - sum(dropped))

"""Baseline characteristics (Table 1) of a task's rows by outcome: the first table a clinical reader looks for.

Per group (with the outcome, without, all): persons, age at the index date (mean, SD, median, IQR), sex, and
the most common prior conditions and drugs (any time before the index date) as a share of persons. Computed in
DuckDB over the task's labels, the persons table and the censored codes (a :class:`~omop_behrt.evaluation.comparison.
Prepared`), never row by row in Python.

Aggregates only, fit for results.json and the report (DESIGN.md, "What may leave a site"): every count of
persons in 1..min_count-1 shows as ``"<10"``; when one of the two outcome groups of a row is hidden the other
is hidden too (``"suppressed"``), so that it cannot be got back from the "all" column; ages of a group of fewer
than ``min_count`` persons are not shown; a listed code is one seen in at least ``min_count`` persons.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa

from omop_behrt.db.database import load_sql
from omop_behrt.shareable import MIN_COUNT, count_text, shown_count

GROUPS = ("with_outcome", "without_outcome", "all")
#: a count hidden only so that a suppressed one cannot be got back by subtraction
COMPLEMENT = "suppressed"
SEX_NAMES = {"F": "female", "M": "male", "U": "other or unknown"}
#: source vocabularies whose codes are drugs (when no CDM concept table gives the domain)
DRUG_VOCABULARIES = frozenset({"RxNorm", "RxNorm Extension", "ATC", "NDC", "dm+d", "BNF", "Multum", "SPL",
                               "VANDF", "GCN_SEQNO", "DPD", "AMT", "BDPM", "NFC", "ATC-DDD"})
#: source vocabularies whose codes are conditions (SNOMED also holds procedures and findings; a CDM tells apart)
CONDITION_VOCABULARIES = frozenset({"SNOMED", "ICD10CM", "ICD10", "ICD9CM", "ICD10GM", "ICD10CN", "Read", "CIEL",
                                    "CALIBER", "OXMIS", "KCD7", "ICDO3"})


def _domain_by_vocabulary(code: str) -> str | None:
    vocab = code.split("/", 1)[0] if "/" in code else ""
    if vocab in DRUG_VOCABULARIES:
        return "Drug"
    if vocab in CONDITION_VOCABULARIES:
        return "Condition"
    return None


def _pair_suppress(row: dict, min_count: int) -> None:
    """Show counts below ``min_count`` as ``<10``; hide the other outcome group of a row when one is hidden."""
    keys = ("with_outcome_persons", "without_outcome_persons")
    for k in ("persons", *keys):
        if isinstance(row.get(k), int):
            row[k] = shown_count(row[k], min_count)
    hidden = [k for k in keys if isinstance(row[k], str)]
    if len(hidden) == 1:
        other = keys[1 - keys.index(hidden[0])]
        row[other] = COMPLEMENT


def baseline_characteristics(labels: pa.Table, persons: pa.Table, codes: pa.Table, *, cdm=None, top: int = 10,
                             min_count: int = MIN_COUNT) -> dict:
    """Table 1 of a task (``labels``: subject_id, index_date, label) by outcome, counts below ``min_count`` hidden.

    ``persons``: subject_id, birth_date, sex; ``codes``: subject_id, time, code (``VOCAB/code``, the events
    before the index dates; later ones are ignored). ``cdm`` (path, URL or OmopCdm) gives concept names and
    domains; without it a code's domain follows its vocabulary (RxNorm etc. drugs; SNOMED, ICD conditions).
    Returns ``n`` (persons per group), ``entries`` (rows per group), ``age`` per group, ``sex`` rows,
    ``conditions`` and ``drugs`` rows (``code``, ``name``, ``persons``, ``with_outcome_persons``,
    ``without_outcome_persons``), ``outcome`` (rows with the outcome, rows, rate) and ``min_count``.
    """
    from omop_behrt.vocab.names import concept_details
    con = duckdb.connect()
    con.register("labels", labels.select(["subject_id", "index_date", "label"]))
    con.register("persons", persons.select(["subject_id", "birth_date", "sex"]))
    con.register("codes", codes.select(["subject_id", "time", "code"]))
    groups = {r["grp"]: r for r in con.sql(load_sql("report/characteristics_groups.sql")).to_arrow_table().to_pylist()}
    sex = con.sql(load_sql("report/characteristics_sex.sql")).to_arrow_table().to_pylist()
    coded = con.sql(load_sql("report/characteristics_codes.sql"), params={"min_count": int(min_count)}).to_arrow_table()
    con.close()
    empty = {"entries": 0, "persons": 0, "age_known": 0}
    g = {k: groups.get(k, empty) for k in GROUPS}
    n = {k: shown_count(int(g[k]["persons"]), min_count) for k in GROUPS}
    if sum(isinstance(n[k], str) for k in GROUPS[:2]) == 1:           # all - the other group gives it back
        n[next(k for k in GROUPS[:2] if isinstance(n[k], int))] = COMPLEMENT
    age = {}
    for k in GROUPS:
        known = int(g[k].get("age_known") or 0)
        age[k] = ({"mean": round(g[k]["age_mean"], 1), "sd": round(g[k]["age_sd"] or 0.0, 1),
                   "median": round(g[k]["age_median"], 1), "q1": round(g[k]["age_q1"], 1),
                   "q3": round(g[k]["age_q3"], 1), "known_persons": known}
                  if known >= min_count and isinstance(n[k], int) else None)
    by_sex: dict[str, dict] = {}
    for r in sex:
        row = by_sex.setdefault(r["sex"], {"sex": r["sex"], "name": SEX_NAMES[r["sex"]], "persons": 0,
                                           "with_outcome_persons": 0, "without_outcome_persons": 0})
        row["persons" if r["grp"] == "all" else f"{r['grp']}_persons"] = int(r["persons"])
    sex_rows = [by_sex[s] for s in ("F", "M", "U") if s in by_sex]
    for row in sex_rows:
        _pair_suppress(row, min_count)
    for col in ("persons", "with_outcome_persons", "without_outcome_persons"):   # sexes sum to the group's n
        hidden = [r for r in sex_rows if isinstance(r[col], str)]
        shown = sorted((r for r in sex_rows if isinstance(r[col], int) and r[col] > 0), key=lambda r: r[col])
        if len(hidden) == 1 and shown:
            shown[0][col] = COMPLEMENT
    codes_list = coded["code"].to_pylist()
    try:
        details = concept_details(cdm, codes_list) if cdm is not None else {}
    except Exception:  # noqa: BLE001 - names are a nicety; a CDM without a usable concept table just lacks them
        details = {}
    lists: dict[str, list[dict]] = {"Condition": [], "Drug": []}
    for r in coded.to_pylist():
        name, domain = details.get(r["code"], (None, None))
        domain = domain if domain in lists else (_domain_by_vocabulary(r["code"]) if domain is None else None)
        if domain in lists and len(lists[domain]) < top:
            row = {"code": r["code"], "name": name, "persons": int(r["persons"]),
                   "with_outcome_persons": int(r["with_outcome"]), "without_outcome_persons": int(r["without_outcome"])}
            _pair_suppress(row, min_count)
            lists[domain].append(row)
    entries, positives = int(g["all"]["entries"]), int(g["with_outcome"]["entries"])
    shown_pos = shown_count(positives, min_count)
    return {"n": n, "entries": {k: shown_count(int(g[k]["entries"]), min_count) for k in GROUPS},
            "age": age, "sex": sex_rows, "conditions": lists["Condition"], "drugs": lists["Drug"],
            "outcome": {"positives": shown_pos, "rows": shown_count(entries, min_count),
                        "rate": round(positives / entries, 4) if entries and isinstance(shown_pos, int)
                        and entries - positives >= min_count else None},
            "domains_from": "concept table" if details else "vocabulary of the code", "min_count": int(min_count)}


def prepared_characteristics(prep, *, cdm=None, top: int = 10, min_count: int = MIN_COUNT) -> dict:
    """:func:`baseline_characteristics` of a :class:`~omop_behrt.evaluation.comparison.Prepared` (its labels,
    persons, codes)."""
    return baseline_characteristics(prep.task.labels, prep.persons, prep.codes, cdm=cdm, top=top,
                                    min_count=min_count)


def describe_rate(outcome: dict, definition: dict | None = None) -> str:
    """The outcome rate in words: ``11.6% (311 of 2,674) had the outcome within 1-365 days``."""
    d = definition or {}
    window = (f" within {d['tar_start']}-{d['tar_end']} days after the index date"
              if "tar_start" in d and "tar_end" in d else "")
    pos, rows, rate = outcome.get("positives"), outcome.get("rows"), outcome.get("rate")
    pct = f"{rate * 100:.1f}% " if isinstance(rate, float) else ""
    return f"{pct}({count_text(pos)} of {count_text(rows)}) had the outcome{window}"


def _cell(count, n) -> str:
    if isinstance(count, int) and isinstance(n, int) and n > 0:
        return f"{count:,} ({count / n * 100:.1f}%)"
    return str(count)


def table_rows(ch: dict, label=lambda code, name: f"{name} ({code})" if name else code) -> list[list[str]]:
    """Table 1 as rows of text (characteristic, with the outcome, without, all); a one-cell row heads a block."""
    n = ch["n"]
    rows = [["Persons", *(f"{n[k]:,}" if isinstance(n[k], int) else str(n[k]) for k in GROUPS)]]
    for what, fmt in (("Age at index, mean (SD)", lambda a: f"{a['mean']:.1f} ({a['sd']:.1f})"),
                      ("Age at index, median [IQR]", lambda a: f"{a['median']:.1f} [{a['q1']:.1f}-{a['q3']:.1f}]")):
        rows.append([what, *(fmt(ch["age"][k]) if ch["age"].get(k) else "not shown" for k in GROUPS)])
    for r in ch["sex"]:
        rows.append([f"Sex: {r['name']}", _cell(r["with_outcome_persons"], n["with_outcome"]),
                     _cell(r["without_outcome_persons"], n["without_outcome"]), _cell(r["persons"], n["all"])])
    for title, key in (("Prior conditions (any time before index)", "conditions"),
                       ("Prior drugs (any time before index)", "drugs")):
        rows.append([title])
        if not ch[key]:
            rows.append([f"none seen in {ch['min_count']} or more persons", "", "", ""])
        for r in ch[key]:
            rows.append([label(r["code"], r.get("name")), _cell(r["with_outcome_persons"], n["with_outcome"]),
                         _cell(r["without_outcome_persons"], n["without_outcome"]), _cell(r["persons"], n["all"])])
    return rows


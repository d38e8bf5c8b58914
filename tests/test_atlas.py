"""ATLAS/CIRCE cohort definitions (26 from the OHDSI Phenotype Library) generated on DuckDB and PostgreSQL.

Counts are checked three ways: equal on both engines for the same CDM, against independent SQL of our own for
GI bleeding (77, 482) and an inclusion rule, and against the project's own first-occurrence builder.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
import shutil
import threading
import warnings

import duckdb
import pytest

from omop_behrt.tasks import atlas
from omop_behrt.tasks import cohorts
from omop_behrt.tasks import labels as tasks
from omop_behrt.cli.main import main
from omop_behrt.db.database import SourceError
from omop_behrt.db.dialects import translate_ohdsi

from conftest import DATA

PHENOTYPES = DATA / "ohdsi_phenotypes"
NSAID_JSON = str(Path(atlas.__file__).parents[1] / "studies" / "nsaid_new_users.json")
NSAIDS = (1118084, 1124300, 1177480, 1115008)


def _counts(gens) -> dict[int, tuple[int, int]]:
    return {g.cohort_id: (g.entries, g.persons) for g in gens}


@pytest.fixture(scope="module")
def eunomia_cohorts(eunomia_db, tmp_path_factory):
    """All 26 Phenotype Library definitions generated on a private copy of Eunomia (DuckDB)."""
    db = tmp_path_factory.mktemp("atlas") / "eunomia.duckdb"
    shutil.copy(eunomia_db, db)
    return db, atlas.generate_cohort_set(db, atlas.read_cohort_set(PHENOTYPES / "cohorts.csv"))


def test_phenotype_library_generates_on_eunomia(eunomia_cohorts):
    db, gens = eunomia_cohorts
    assert len(gens) == 26
    counts = _counts(gens)
    assert counts[77] == (391, 391)          # the independent run of cohort 77 on Eunomia
    assert counts[77] == counts[888]         # 888 = 77 with a 30-day era gap: one episode per person here
    assert counts[417] == counts[482] == (479, 479)
    assert counts[327][0] > counts[327][1] > 2000     # pharyngitis: all events, several per person
    assert sum(1 for e, _ in counts.values() if e) == 13
    con = duckdb.connect(str(db), read_only=True)
    stored = dict(con.execute("SELECT cohort_definition_id, COUNT(*) FROM results.cohort GROUP BY 1").fetchall())
    assert {k: v for k, v in stored.items() if v} == {k: e for k, (e, _) in counts.items() if e}
    # no temp view or temp table is left behind, and the CDM schema holds no new table
    assert con.execute("SELECT COUNT(*) FROM duckdb_views() WHERE temporary AND NOT internal").fetchall()[0][0] == 0
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                        "WHERE table_schema = 'results'").fetchall()}
    assert {"cohort", "cohort_inclusion", "cohort_inclusion_result", "cohort_summary_stats"} <= tables


def test_gi_bleed_matches_independent_sql(eunomia_cohorts):
    """77: GI haemorrhage (concept set 5, descendants, minus its exclusions) starting inside an inpatient or ER
    visit (concept set 2) of the same person, inside an observation period. 482: the same without the visit."""
    db, _ = eunomia_cohorts
    def concept_sets(cohort_id):
        d = json.loads((PHENOTYPES / "cohorts" / f"{cohort_id}.json").read_text())
        return {cs["id"]: cs["expression"]["items"] for cs in d["ConceptSets"]}
    sets = concept_sets(77)

    def concepts(items):
        def expand(chosen):
            ids = ",".join(str(i["concept"]["CONCEPT_ID"]) for i in chosen) or "NULL"
            desc = ",".join(str(i["concept"]["CONCEPT_ID"]) for i in chosen if i.get("includeDescendants")) or "NULL"
            return (f"SELECT concept_id FROM main.concept WHERE concept_id IN ({ids}) UNION SELECT "
                    f"descendant_concept_id FROM main.concept_ancestor WHERE ancestor_concept_id IN ({desc})")
        keep = [i for i in items if not i.get("isExcluded")]
        drop = [i for i in items if i.get("isExcluded")]
        return f"({expand(keep)}) EXCEPT ({expand(drop)})" if drop else expand(keep)

    con = duckdb.connect(str(db), read_only=True)
    in_op = ("EXISTS (SELECT 1 FROM main.observation_period op WHERE op.person_id = co.person_id AND "
             "co.condition_start_date BETWEEN op.observation_period_start_date AND op.observation_period_end_date)")
    bleeds = f"SELECT * FROM main.condition_occurrence co WHERE condition_concept_id IN ({concepts(sets[5])})"
    in_visit = (f"EXISTS (SELECT 1 FROM main.visit_occurrence v WHERE v.person_id = co.person_id AND "
                f"v.visit_concept_id IN ({concepts(sets[2])}) AND co.condition_start_date BETWEEN "
                f"v.visit_start_date AND v.visit_end_date)")
    expected_77 = con.execute(f"SELECT person_id, MIN(condition_start_date) FROM ({bleeds}) co WHERE {in_op} AND "
                              f"{in_visit} GROUP BY 1").fetchall()
    got_77 = con.execute("SELECT subject_id, MIN(cohort_start_date) FROM results.cohort "
                         "WHERE cohort_definition_id = 77 GROUP BY 1").fetchall()
    assert sorted(got_77) == sorted(expected_77) and len(expected_77) == 391
    bleeds_482 = (f"SELECT * FROM main.condition_occurrence co WHERE condition_concept_id IN "
                  f"({concepts(concept_sets(482)[0])})")
    expected_482 = con.execute(f"SELECT COUNT(DISTINCT person_id) FROM ({bleeds_482}) co WHERE {in_op}").fetchall()
    assert expected_482[0][0] == 479


def test_nsaid_definition_matches_first_occurrence_builder(eunomia_db, tmp_path):
    """The shipped NSAID new-user definition = cohorts.first_occurrence_cohort, less the persons whose first
    exposure lies outside every observation period (CIRCE requires the index inside one)."""
    db = tmp_path / "e.duckdb"
    shutil.copy(eunomia_db, db)
    assert cohorts.from_atlas(NSAID_JSON, cohort_id=1).generate(db) == 2686
    assert cohorts.first_occurrence_cohort(db, 2, list(NSAIDS), domains=["drug"]) == 2694
    con = duckdb.connect(str(db), read_only=True)
    q = "SELECT subject_id, cohort_start_date, cohort_end_date FROM results.cohort WHERE cohort_definition_id = "
    assert set(con.execute(q + "1").fetchall()) < set(con.execute(q + "2").fetchall())
    outside = con.execute(
        "SELECT COUNT(*) FROM results.cohort c WHERE cohort_definition_id = 2 AND NOT EXISTS (SELECT 1 FROM "
        "main.observation_period op WHERE op.person_id = c.subject_id AND c.cohort_start_date BETWEEN "
        "op.observation_period_start_date AND op.observation_period_end_date)").fetchall()[0][0]
    assert outside == 2694 - 2686


def test_inclusion_rule_attrition_matches_sql(eunomia_db, tmp_path):
    """NSAID new users with a rule 'GI haemorrhage (192671 + descendants) on or after the index': CIRCE's
    attrition equals a count of our own, and the cohort keeps exactly those persons."""
    db = tmp_path / "e.duckdb"
    shutil.copy(eunomia_db, db)
    d = json.loads(open(NSAID_JSON).read())
    d["ConceptSets"].append({"id": 1, "name": "GI haemorrhage", "expression": {"items": [
        {"concept": {"CONCEPT_ID": 192671}, "isExcluded": False, "includeDescendants": True}]}})
    d["InclusionRules"] = [{"name": "later GI bleed", "expression": {"Type": "ALL", "CriteriaList": [{
        "Criteria": {"ConditionOccurrence": {"CodesetId": 1}},
        "StartWindow": {"Start": {"Days": 0, "Coeff": 1}, "End": {"Coeff": 1}, "UseIndexEnd": False,
                        "UseEventEnd": False},
        "IgnoreObservationPeriod": True,
        "Occurrence": {"Type": 2, "Count": 1}}], "DemographicCriteriaList": [], "Groups": []}}]
    plain, gen = atlas.generate_cohort_set(db, [atlas.from_atlas(NSAID_JSON, cohort_id=1),
                                                atlas.from_atlas(d, cohort_id=3, name="nsaid + later bleed")])
    con = duckdb.connect(str(db), read_only=True)
    expected = con.execute(
        "SELECT COUNT(*) FROM results.cohort n WHERE cohort_definition_id = 1 AND EXISTS (SELECT 1 FROM "
        "main.condition_occurrence co JOIN main.concept_ancestor ca ON co.condition_concept_id = "
        "ca.descendant_concept_id WHERE ca.ancestor_concept_id = 192671 AND co.person_id = n.subject_id AND "
        "co.condition_start_date >= n.cohort_start_date)").fetchall()[0][0]
    assert gen.base_persons == plain.persons == 2686
    assert gen.attrition == [{"rule": "later GI bleed", "persons_meeting": gen.persons,
                              "persons_remaining": gen.persons}]
    assert 0 < gen.persons == expected < 2686
    assert "later GI bleed" in atlas.attrition_table([gen])
    rules = con.execute("SELECT rule_sequence, name FROM results.cohort_inclusion WHERE cohort_definition_id = 3"
                        ).fetchall()
    assert rules == [(0, "later GI bleed")]


def test_regenerating_replaces_rows(eunomia_db, tmp_path):
    db = tmp_path / "e.duckdb"
    shutil.copy(eunomia_db, db)
    c = atlas.from_atlas(PHENOTYPES / "cohorts" / "77.json")
    assert c.generate(db) == c.generate(db) == 391
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT COUNT(*) FROM results.cohort WHERE cohort_definition_id = 77").fetchall() == [(391,)]


@pytest.fixture(scope="module")
def eunomia_pg(eunomia_db, pg_url):
    """Eunomia copied into PostgreSQL as stored (UPPER-CASE columns, value_as_number as text)."""
    import uuid

    from cdm_fixtures import copy_duckdb_to_postgres, drop_postgres_schema
    schema = "omop_behrt_t_" + uuid.uuid4().hex[:10]
    copy_duckdb_to_postgres(eunomia_db, pg_url, schema)
    yield schema
    drop_postgres_schema(pg_url, schema)
    drop_postgres_schema(pg_url, schema + "_res")


@pytest.mark.postgres
def test_phenotype_library_equal_on_postgresql(eunomia_cohorts, eunomia_pg, pg_url):
    _, duck = eunomia_cohorts
    pg = atlas.generate_cohort_set(pg_url, atlas.read_cohort_set(PHENOTYPES / "cohorts.csv"), cdm_schema=eunomia_pg,
                                   results_schema=eunomia_pg + "_res")
    assert _counts(pg) == _counts(duck)
    assert [g.attrition for g in pg] == [g.attrition for g in duck]


@pytest.mark.postgres
def test_generation_waits_for_another_writer_on_postgresql(eunomia_pg, pg_url):
    """While another transaction holds the cohort table's advisory lock, generation waits; then it writes the
    cohort once (two runs take turns instead of leaving its rows twice)."""
    import sqlalchemy as sa
    res = eunomia_pg + "_res"
    c = atlas.from_atlas(PHENOTYPES / "cohorts" / "77.json")
    c.generate(pg_url, cdm_schema=eunomia_pg, results_schema=res, cohort_table="conc")
    done = threading.Event()
    engine = sa.create_engine(pg_url)
    with engine.begin() as holder:
        holder.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                       {"k": f'omop_behrt.cohort "{res}"."conc"'})
        t = threading.Thread(target=lambda: (c.generate(pg_url, cdm_schema=eunomia_pg, results_schema=res,
                                                        cohort_table="conc"), done.set()))
        t.start()
        assert not done.wait(2.0)
    t.join(60)
    engine.dispose()
    assert done.is_set()
    assert cohorts.CohortTable(pg_url, res, "conc").read(77).num_rows == 391


@pytest.fixture(scope="module")
def synthea_both(synthea_dir, pg_url, tmp_path_factory):
    """The Synthea subset (CDM 5.4, no concept_ancestor) in DuckDB and in PostgreSQL, from the official DDL."""
    import uuid

    from cdm_fixtures import build_duckdb_cdm, drop_postgres_schema, load_postgres_cdm
    duck = build_duckdb_cdm(tmp_path_factory.mktemp("synthea_atlas") / "s.duckdb")
    schema = "omop_behrt_t_" + uuid.uuid4().hex[:10]
    load_postgres_cdm(pg_url, schema)
    yield duck, schema
    drop_postgres_schema(pg_url, schema)
    drop_postgres_schema(pg_url, schema + "_res")


@pytest.mark.postgres
def test_phenotype_library_on_synthea_both_engines(synthea_both, pg_url):
    duck, schema = synthea_both
    defs = atlas.read_cohort_set(PHENOTYPES / "cohorts")
    with pytest.warns(UserWarning, match="concept_ancestor table is (empty|missing)"):
        d = atlas.generate_cohort_set(duck, defs, cdm_schema="cdm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = atlas.generate_cohort_set(pg_url, defs, cdm_schema=schema, results_schema=schema + "_res")
    assert _counts(d) == _counts(p)
    assert any(g.entries for g in d)
    assert any("concept_ancestor" in w for g in d for w in g.warnings)


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON: Expecting property name"),
    ("[]", "expected a JSON object"),
    ('{"ConceptSets": []}', "field PrimaryCriteria is missing"),
    ('{"PrimaryCriteria": {"CriteriaList": []}}', "PrimaryCriteria.CriteriaList must be a non-empty list"),
    ('{"PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {}}]}}', "ObservationWindow is missing"),
    ('{"PrimaryCriteria": {"CriteriaList": [{"Foo": {}}], "ObservationWindow": {}}}',
     "PrimaryCriteria.CriteriaList[0]: unsupported criterion 'Foo'"),
    ('{"PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 4}}], "ObservationWindow": {}},'
     ' "ConceptSets": [{"id": 0, "name": "x", "expression": {"items": []}}]}',
     "PrimaryCriteria.CriteriaList[0].ConditionOccurrence.CodesetId = 4 names no concept set"),
    ('{"PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {}}], "ObservationWindow": {}}, '
     '"InclusionRules": [{"name": "r", "expression": {"CriteriaList": [{"Criteria": {"Note": {}}}]}}]}',
     "InclusionRules[0].expression.CriteriaList[0].Criteria: unsupported criterion 'Note'"),
])
def test_bad_definitions_name_the_cohort_and_field(tmp_path, text, message):
    f = tmp_path / "12.json"
    f.write_text(text)
    with pytest.raises(atlas.AtlasError) as e:
        atlas.from_atlas(f).sql("duckdb")
    assert message in str(e.value) and "12.json" in str(e.value)


def test_cohort_set_and_id_errors(tmp_path, eunomia_db):
    (tmp_path / "set.csv").write_text("cohort_id,cohort_name,json\nx,a,77.json\n")
    with pytest.raises(atlas.AtlasError, match="row 2: cohort_id 'x' is not an integer"):
        atlas.read_cohort_set(tmp_path / "set.csv")
    (tmp_path / "set.csv").write_text("cohort_id,cohort_name,json\n5,a,missing.json\n")
    with pytest.raises(atlas.AtlasError, match="row 2: cohort 5: definition .*missing.json not found"):
        atlas.read_cohort_set(tmp_path / "set.csv")
    c = atlas.from_atlas((PHENOTYPES / "cohorts" / "77.json").read_text())
    with pytest.raises(atlas.AtlasError, match="no cohort id"):
        c.sql("duckdb")
    with pytest.raises(atlas.AtlasError, match="cohort id 7 is given to more than one"):
        atlas.generate_cohort_set(eunomia_db, [c, c], cohort_ids=[7, 7])
    with pytest.raises(ValueError, match="unknown SQL dialect 'db2'"):
        c.sql("db2", cohort_definition_id=1)


def test_bigquery_refused_with_reason():
    """ohdsi-circepy 0.3.0's BigQuery translation does not finish on cohort SQL: a clear refusal, not a hang."""
    with pytest.raises(ValueError, match="cannot translate cohort SQL to BigQuery"):
        atlas.from_atlas(PHENOTYPES / "cohorts" / "77.json").sql("bigquery")


@pytest.mark.parametrize("dialect", ["postgresql", "duckdb", "spark", "snowflake", "sql server", "redshift",
                                     "oracle"])
def test_sql_translates_to_every_dialect(dialect):
    c = atlas.from_atlas(PHENOTYPES / "cohorts" / "27.json")
    stmts = c.sql(dialect, cdm_schema="cdm")
    text = "\n".join(stmts)
    assert len(stmts) > 30 and "cdm.CONCEPT" in text and "@" not in text
    assert ("#Codesets" in text) == (dialect in ("sql server", "redshift"))     # their own temp tables
    # where the dialect emulates temporary tables, CIRCE's working tables go to the results schema (never the
    # session's current schema, which is often the CDM's)
    created = [re.match(r"\s*CREATE\s+(?:TEMP\s+)?TABLE\s+(\S+)", s, re.I) for s in stmts]
    names = [m.group(1) for m in created if m]
    assert names and all(n.startswith("results.") for n in names) == (dialect in ("spark", "snowflake", "oracle"))


def test_cli_cohort_atlas_set_and_sql(eunomia_db, tmp_path, capsys):
    db = tmp_path / "e.duckdb"
    shutil.copy(eunomia_db, db)
    # a set of two (the whole library is generated by the eunomia_cohorts fixture; the CLI is what is tested here)
    folder = tmp_path / "set"
    folder.mkdir()
    for cid in (27, 77):
        shutil.copy(PHENOTYPES / "cohorts" / f"{cid}.json", folder / f"{cid}.json")
    assert main(["cohort", "atlas", "--source", str(db), "--folder", str(folder),
                 "--json", NSAID_JSON, "--cohort-id", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 cohorts written to results.cohort" in out
    assert "rule 1: No Chronic Obstructive Lung Disease (COPD) prior: 101 meet it, 101 remain" in out
    assert cohorts.CohortTable(db, "results").read(1).num_rows == 2686
    assert cohorts.CohortTable(db, "results").read(77).num_rows == 391      # as the library fixture found
    # a CSV cohort set (the library's own lines for the two), its json beside it as cohorts/<id>.json
    lines = (PHENOTYPES / "cohorts.csv").read_text().splitlines()
    (tmp_path / "cohorts").mkdir()
    for cid in (27, 77):
        shutil.copy(PHENOTYPES / "cohorts" / f"{cid}.json", tmp_path / "cohorts" / f"{cid}.json")
    (tmp_path / "set.csv").write_text("\n".join([lines[0]] + [x for x in lines if x.startswith(("27,", "77,"))]))
    assert main(["cohort", "atlas", "--csv", str(tmp_path / "set.csv"), "--sql-dialect", "oracle",
                 "--sql-out", str(tmp_path / "sql")]) == 0
    assert sorted(f.name for f in (tmp_path / "sql").glob("*.sql")) == ["27.sql", "77.sql"]
    (tmp_path / "bad.json").write_text('{"PrimaryCriteria": {"CriteriaList": [{"Foo": {}}], "ObservationWindow": {}}}')
    assert main(["cohort", "atlas", "--source", str(db), "--json", str(tmp_path / "bad.json"),
                 "--cohort-id", "3"]) == 2
    assert "cohort 3 \"bad\"" in capsys.readouterr().err


def test_plp_task_with_atlas_target_and_outcome(eunomia_db, tmp_path, capsys):
    db = tmp_path / "e.duckdb"
    shutil.copy(eunomia_db, db)
    task = tasks.plp_task(db, cohorts.from_atlas(NSAID_JSON, cohort_id=1),
                          outcome_cohort=cohorts.from_atlas(PHENOTYPES / "cohorts" / "77.json"))
    assert task.attrition["target entries"] == 2686 and task.attrition["kept"] == 2673
    assert task.definition["outcome_atlas"]["cohort_id"] == 77
    assert len(task.definition["target_atlas"]["sha256"]) == 64
    # the same through the CLI, and equal to the task built from the generated cohort ids
    assert main(["task", "plp", "--source", str(db), "--target-json", NSAID_JSON, "--target-cohort-id", "1",
                 "--outcome-json", str(PHENOTYPES / "cohorts" / "77.json"), "--out", str(tmp_path / "t")]) == 0
    again = tasks.plp_task(db, 1, outcome_cohort=77)
    assert tasks.Task.load(tmp_path / "t").labels.equals(again.labels) and again.labels.equals(task.labels)
    assert int(sum(task.labels["label"].to_pylist())) == task.attrition["outcomes"] == 252


def test_generation_refuses_missing_or_empty_source(tmp_path):
    nsaid = [atlas.from_atlas(NSAID_JSON, cohort_id=1)]
    with pytest.raises(SourceError, match="nothing.duckdb: no such CDM"):
        atlas.generate_cohort_set(tmp_path / "nothing.duckdb", nsaid)
    assert not (tmp_path / "nothing.duckdb").exists()
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    with pytest.raises(SourceError, match="CDM table main.person is missing"):
        atlas.generate_cohort_set(tmp_path / "empty.duckdb", nsaid)


def test_embed_cohort_json(eunomia_db, tiny_model, tmp_path, capsys):
    """embed --cohort-json generates the ATLAS cohort, then embeds each of its entries."""
    import pyarrow.parquet as pq
    db = tmp_path / "e.duckdb"
    shutil.copy(eunomia_db, db)
    assert main(["embed", "--model", str(tiny_model), "--source", str(db), "--cohort-json",
                 str(PHENOTYPES / "cohorts" / "77.json"), "--out", str(tmp_path / "v.parquet")]) == 0
    assert "embedded 391 of 391 cohort entries" in capsys.readouterr().out
    vectors = pq.read_table(tmp_path / "v.parquet")
    assert vectors.num_rows == 391 and set(vectors["cohort_definition_id"].to_pylist()) == {77}


@pytest.mark.parametrize("dialect", ["duckdb", "postgresql", "oracle", "redshift"])
def test_fast_translation_equals_sqlrender(dialect):
    """dialects.translate_ohdsi skips the patterns that cannot match; its output is sqlrender's, byte for byte."""
    from circe import sqlrender
    from circe.api import build_cohort_query
    from circe.cohortdefinition import BuildExpressionQueryOptions
    for cid in (27, 957):
        c = atlas.from_atlas(PHENOTYPES / "cohorts" / f"{cid}.json")
        o = BuildExpressionQueryOptions()
        o.cdm_schema, o.vocabulary_schema, o.result_schema, o.target_table = "cdm", "cdm", "res", "res.cohort"
        o.cohort_id, o.generate_stats = cid, True
        rendered = sqlrender.render(build_cohort_query(c.expression(), o))
        if dialect == "oracle" and cid == 27:   # the one of these that emulates temp tables: in a temp schema
            # (sqlrender's Oracle translation takes ~7 s a definition here: this one is translated once, not twice)
            assert translate_ohdsi(rendered, dialect, "scratch") == sqlrender.translate(
                rendered, dialect, temp_emulation_schema="scratch")
            continue
        assert translate_ohdsi(rendered, dialect) == sqlrender.translate(rendered, dialect)

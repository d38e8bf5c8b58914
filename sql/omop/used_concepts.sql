-- The concept rows the clinical tables name (standard, source and unit concepts), staged once per extraction in
-- DuckDB (omop_queries.staged_joins) so that every table's events join the concepts in use rather than the whole
-- vocabulary: a site's concept table holds Athena's 6-9M rows, its CDM names a few thousand of them, and each
-- table's query joins the concept table three times. Same columns as the concept table, under their CDM names.
SELECT c.{c_concept_id} AS concept_id, c.{c_vocabulary_id} AS vocabulary_id, c.{c_concept_code} AS concept_code,
       {c_concept_name} AS concept_name
FROM {concept_table} c
WHERE c.{c_concept_id} IN (SELECT DISTINCT id FROM ({ids}) u WHERE id IS NOT NULL AND id <> 0)

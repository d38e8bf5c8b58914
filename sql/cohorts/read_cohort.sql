-- Index dates from an OHDSI cohort table: one row per cohort entry.
SELECT CAST(c.{c_cohort_definition_id} AS BIGINT) AS cohort_definition_id,
       CAST(c.{c_subject_id} AS BIGINT) AS subject_id,
       CAST(c.{c_cohort_start_date} AS TIMESTAMP) AS index_date
FROM {cohort_table} c
WHERE c.{c_cohort_definition_id} = :cohort_definition_id
ORDER BY subject_id, index_date

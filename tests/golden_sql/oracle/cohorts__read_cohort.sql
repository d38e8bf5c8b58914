SELECT
  CAST(c."cohort_definition_id" AS INT) AS cohort_definition_id,
  CAST(c."subject_id" AS INT) AS subject_id,
  CAST(c."cohort_start_date" AS TIMESTAMP) AS index_date
FROM "bench_sql_dialects"."cohort" c
WHERE
  c."cohort_definition_id" = :cohort_definition_id
ORDER BY
  subject_id,
  index_date

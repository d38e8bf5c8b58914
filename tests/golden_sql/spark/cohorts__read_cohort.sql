SELECT
  CAST(c.`cohort_definition_id` AS BIGINT) AS cohort_definition_id,
  CAST(c.`subject_id` AS BIGINT) AS subject_id,
  CAST(c.`cohort_start_date` AS TIMESTAMP_NTZ) AS index_date
FROM `bench_sql_dialects`.`cohort` AS c
WHERE
  c.`cohort_definition_id` = :cohort_definition_id
ORDER BY
  subject_id NULLS LAST,
  index_date NULLS LAST

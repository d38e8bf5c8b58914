SELECT
  CAST(c.[cohort_definition_id] AS BIGINT) AS cohort_definition_id,
  CAST(c.[subject_id] AS BIGINT) AS subject_id,
  CAST(c.[cohort_start_date] AS DATETIME2) AS index_date
FROM [bench_sql_dialects].[cohort] AS c
WHERE
  c.[cohort_definition_id] = :cohort_definition_id
ORDER BY
  CASE WHEN CAST(c.[subject_id] AS BIGINT) IS NULL THEN 1 ELSE 0 END, CAST(c.[subject_id] AS BIGINT),
  CASE WHEN CAST(c.[cohort_start_date] AS DATETIME2) IS NULL THEN 1 ELSE 0 END, CAST(c.[cohort_start_date] AS DATETIME2)

INSERT INTO [bench_sql_dialects].[cohort] (
  cohort_definition_id,
  subject_id,
  cohort_start_date,
  cohort_end_date
)
SELECT
  :cohort_definition_id,
  person_id,
  MAX(CASE WHEN n = :min_visits THEN start_date END),
  MAX(start_date)
FROM (
  SELECT
    person_id AS person_id,
    start_date AS start_date,
    ROW_NUMBER() OVER (
      PARTITION BY person_id
      ORDER BY CASE WHEN start_date IS NULL THEN 1 ELSE 0 END, start_date
    ) AS n
  FROM (
    SELECT
      CAST(e.[person_id] AS BIGINT) AS person_id,
      CAST(e.[visit_start_date] AS DATE) AS start_date
    FROM [bench_sql_dialects].[visit_occurrence] AS e
  ) AS v
) AS numbered
GROUP BY
  person_id
HAVING
  MAX(n) >= :min_visits

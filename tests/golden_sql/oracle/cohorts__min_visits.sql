INSERT INTO "bench_sql_dialects"."cohort" (
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
    person_id,
    start_date,
    ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY start_date) AS n
  FROM (
    SELECT
      CAST(e."person_id" AS INT) AS person_id,
      CAST(e."visit_start_date" AS DATE) AS start_date
    FROM "bench_sql_dialects"."visit_occurrence" e
  ) v
) numbered
GROUP BY
  person_id
HAVING
  MAX(n) >= :min_visits

SELECT
  1
FROM `bench_sql_dialects`.`visit_occurrence` AS e
WHERE
  e.`visit_occurrence_id` IS NOT NULL
GROUP BY
  e.`visit_occurrence_id`
HAVING
  COUNT(*) > 1
LIMIT 1

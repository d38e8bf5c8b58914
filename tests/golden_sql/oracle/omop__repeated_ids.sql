SELECT
  1
FROM "bench_sql_dialects"."visit_occurrence" e
WHERE
  e."visit_occurrence_id" IS NOT NULL
GROUP BY
  e."visit_occurrence_id"
HAVING
  COUNT(*) > 1
FETCH FIRST 1 ROWS ONLY

SELECT
TOP 1
  1
FROM [bench_sql_dialects].[visit_occurrence] AS e
WHERE
  e.[visit_occurrence_id] IS NOT NULL
GROUP BY
  e.[visit_occurrence_id]
HAVING
  COUNT_BIG(*) > 1

SELECT
  CAST(d."person_id" AS BIGINT) AS person_id,
  MIN(CAST(d."death_date" AS DATE)) AS death_date
FROM "bench_sql_dialects"."death" AS d
GROUP BY
  CAST(d."person_id" AS BIGINT)

SELECT
  CAST(c."concept_id" AS BIGINT) AS concept_id,
  MIN(CAST(c."concept_name" AS VARCHAR)) AS name
FROM "bench_sql_dialects"."concept" AS c
WHERE
  CAST(c."concept_id" AS BIGINT) IN (
    SELECT
      UNNEST(CAST(:ids AS BIGINT[]))
  )
GROUP BY
  1

SELECT
  CAST(c.`concept_id` AS BIGINT) AS concept_id,
  MIN(CAST(c.`concept_name` AS STRING)) AS name
FROM `bench_sql_dialects`.`concept` AS c
WHERE
  CAST(c.`concept_id` AS BIGINT) IN (
    SELECT
      EXPLODE(CAST(:ids AS ARRAY<BIGINT>))
  )
GROUP BY
  1

SELECT
  CAST(`c_concept_id` AS BIGINT) AS concept_id,
  MIN(CAST(`c_name` AS STRING)) AS name
FROM `concept` AS c
WHERE
  CAST(`c_concept_id` AS BIGINT) IN (
    SELECT
      EXPLODE(CAST(:ids AS ARRAY<BIGINT>))
  )
GROUP BY
  1

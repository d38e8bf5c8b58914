SELECT
  CAST("c_concept_id" AS BIGINT) AS concept_id,
  MIN(CAST("c_name" AS TEXT)) AS name
FROM "concept" AS c
WHERE
  CAST("c_concept_id" AS BIGINT) IN (
    SELECT
      UNNEST(CAST(:ids AS BIGINT[]))
  )
GROUP BY
  1

SELECT
  TRY_CAST(d."person_id" AS BIGINT) AS person_id,
  MIN(TRY_CAST(d."death_date" AS DATE)) AS death_date
FROM "main"."death" AS d
GROUP BY
  TRY_CAST(d."person_id" AS BIGINT)

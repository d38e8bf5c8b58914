SELECT
  w.person_id,
  w.covered_until AS gap_start,
  w.start_date AS gap_end
FROM (
  SELECT
    p.person_id,
    p.start_date,
    MAX(p.end_date) OVER (
      PARTITION BY p.person_id
      ORDER BY p.start_date, p.end_date
      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ) AS covered_until
  FROM (
    SELECT
      TRY_CAST(o."PERSON_ID" AS BIGINT) AS person_id,
      TRY_CAST(o."OBSERVATION_PERIOD_START_DATE" AS DATE) AS start_date,
      TRY_CAST(o."OBSERVATION_PERIOD_END_DATE" AS DATE) AS end_date
    FROM "main"."observation_period" AS o
  ) AS p
  WHERE
    NOT p.start_date IS NULL AND NOT p.end_date IS NULL
) AS w
WHERE
  w.start_date > w.covered_until

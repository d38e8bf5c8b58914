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
      CAST(o."person_id" AS INT) AS person_id,
      CAST(o."observation_period_start_date" AS DATE) AS start_date,
      CAST(o."observation_period_end_date" AS DATE) AS end_date
    FROM "bench_sql_dialects"."observation_period" o
  ) p
  WHERE
    p.start_date IS NOT NULL AND p.end_date IS NOT NULL
) w
WHERE
  w.start_date > w.covered_until

SELECT
  o.subject_id,
  o.start_date,
  o.end_date,
  o.row_key,
  CASE
    WHEN o.person_raw IS NULL
    THEN 'null person_id'
    WHEN o.cast_error IS NOT NULL
    THEN o.cast_error
    WHEN o.subject_id IS NULL
    THEN 'person_id is not an integer'
    WHEN o.start_raw IS NULL OR o.end_raw IS NULL
    THEN 'null observation_period date'
    WHEN o.start_date IS NULL OR o.end_date IS NULL
    THEN 'unparseable observation_period date'
    WHEN o.end_date < o.start_date
    THEN 'observation_period ends before it starts'
    WHEN o.start_date < CAST(:valid_start AS DATE)
    OR o.end_date > CAST(:valid_end AS DATE)
    THEN 'observation_period outside the valid dates 1800-01-01..2999-12-31'
  END AS reason
FROM (
  SELECT
    CAST(o."person_id" AS BIGINT) AS subject_id,
    o."person_id" AS person_raw,
    CAST(o."observation_period_start_date" AS DATE) AS start_date,
    o."observation_period_start_date" AS start_raw,
    CAST(o."observation_period_end_date" AS DATE) AS end_date,
    o."observation_period_end_date" AS end_raw,
    CAST(o."observation_period_id" AS VARCHAR) AS row_key,
    CAST(NULL AS VARCHAR) AS cast_error
  FROM "bench_sql_dialects"."observation_period" AS o
  WHERE
    1 = 1
) AS o

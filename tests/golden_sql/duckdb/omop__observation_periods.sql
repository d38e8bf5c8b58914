SELECT
  o.subject_id,
  o.start_date,
  o.end_date,
  o.row_key,
  CASE
    WHEN o.person_raw IS NULL
    THEN 'null person_id'
    WHEN NOT o.cast_error IS NULL
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
    TRY_CAST(o."PERSON_ID" AS BIGINT) AS subject_id,
    o."PERSON_ID" AS person_raw,
    TRY_CAST(o."OBSERVATION_PERIOD_START_DATE" AS DATE) AS start_date,
    o."OBSERVATION_PERIOD_START_DATE" AS start_raw,
    TRY_CAST(o."OBSERVATION_PERIOD_END_DATE" AS DATE) AS end_date,
    o."OBSERVATION_PERIOD_END_DATE" AS end_raw,
    CAST(o."OBSERVATION_PERIOD_ID" AS TEXT) AS row_key,
    CAST(NULL AS TEXT) AS cast_error
  FROM "main"."observation_period" AS o
  WHERE
    1 = 1
) AS o

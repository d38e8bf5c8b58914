SELECT
  CAST(o.`person_id` AS BIGINT) AS person_id,
  MIN(CAST(o.`observation_period_start_date` AS DATE)) AS first_observed,
  MAX(CAST(o.`observation_period_end_date` AS DATE)) AS last_observed
FROM `bench_sql_dialects`.`observation_period` AS o
GROUP BY
  CAST(o.`person_id` AS BIGINT)

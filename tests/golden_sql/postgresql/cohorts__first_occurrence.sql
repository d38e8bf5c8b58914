INSERT INTO "bench_sql_dialects"."cohort" (
  cohort_definition_id,
  subject_id,
  cohort_start_date,
  cohort_end_date
)
SELECT
  :cohort_definition_id,
  f.person_id,
  f.start_date,
  COALESCE(MAX(CAST(op."observation_period_end_date" AS DATE)), f.start_date)
FROM (
  WITH ids AS (
    SELECT
      UNNEST(CAST(:concept_ids AS BIGINT[])) AS concept_id
  ), wanted AS (
    SELECT
      concept_id
    FROM ids
    UNION
    SELECT
      CAST(ca."concept_id" AS BIGINT)
    FROM "bench_sql_dialects"."concept" AS ca
    WHERE
      :descendants
      AND CAST(ca."concept_id" AS BIGINT) IN (
        SELECT
          concept_id
        FROM ids
      )
  ), occ AS (
    SELECT
      CAST(e."person_id" AS BIGINT) AS person_id,
      CAST(e."condition_start_date" AS DATE) AS start_date
    FROM "bench_sql_dialects"."condition_occurrence" AS e
    WHERE
      CAST(e."condition_concept_id" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."person_id" AS BIGINT) AS person_id,
      CAST(e."drug_exposure_start_date" AS DATE) AS start_date
    FROM "bench_sql_dialects"."drug_exposure" AS e
    WHERE
      CAST(e."drug_concept_id" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."person_id" AS BIGINT) AS person_id,
      CAST(e."procedure_date" AS DATE) AS start_date
    FROM "bench_sql_dialects"."procedure_occurrence" AS e
    WHERE
      CAST(e."procedure_concept_id" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."person_id" AS BIGINT) AS person_id,
      CAST(e."measurement_date" AS DATE) AS start_date
    FROM "bench_sql_dialects"."measurement" AS e
    WHERE
      CAST(e."measurement_concept_id" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."person_id" AS BIGINT) AS person_id,
      CAST(e."observation_date" AS DATE) AS start_date
    FROM "bench_sql_dialects"."observation" AS e
    WHERE
      CAST(e."observation_concept_id" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."person_id" AS BIGINT) AS person_id,
      CAST(e."device_exposure_start_date" AS DATE) AS start_date
    FROM "bench_sql_dialects"."device_exposure" AS e
    WHERE
      CAST(e."device_concept_id" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
  )
  SELECT
    person_id,
    MIN(start_date) AS start_date
  FROM occ
  GROUP BY
    person_id
) AS f
LEFT JOIN "bench_sql_dialects"."observation_period" AS op
  ON op."person_id" = f.person_id
  AND f.start_date BETWEEN CAST(op."observation_period_start_date" AS DATE) AND CAST(op."observation_period_end_date" AS DATE)
GROUP BY
  f.person_id,
  f.start_date

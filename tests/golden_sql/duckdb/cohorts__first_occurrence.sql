INSERT INTO "results"."cohort" (
  cohort_definition_id,
  subject_id,
  cohort_start_date,
  cohort_end_date
)
SELECT
  :cohort_definition_id,
  f.person_id,
  f.start_date,
  COALESCE(MAX(CAST(op."OBSERVATION_PERIOD_END_DATE" AS DATE)), f.start_date)
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
      CAST(ca."DESCENDANT_CONCEPT_ID" AS BIGINT)
    FROM "main"."concept_ancestor" AS ca
    WHERE
      :descendants
      AND CAST(ca."ANCESTOR_CONCEPT_ID" AS BIGINT) IN (
        SELECT
          concept_id
        FROM ids
      )
  ), occ AS (
    SELECT
      CAST(e."PERSON_ID" AS BIGINT) AS person_id,
      CAST(e."CONDITION_START_DATE" AS DATE) AS start_date
    FROM "main"."condition_occurrence" AS e
    WHERE
      CAST(e."CONDITION_CONCEPT_ID" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."PERSON_ID" AS BIGINT) AS person_id,
      CAST(e."DRUG_EXPOSURE_START_DATE" AS DATE) AS start_date
    FROM "main"."drug_exposure" AS e
    WHERE
      CAST(e."DRUG_CONCEPT_ID" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."PERSON_ID" AS BIGINT) AS person_id,
      CAST(e."PROCEDURE_DATE" AS DATE) AS start_date
    FROM "main"."procedure_occurrence" AS e
    WHERE
      CAST(e."PROCEDURE_CONCEPT_ID" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."PERSON_ID" AS BIGINT) AS person_id,
      CAST(e."MEASUREMENT_DATE" AS DATE) AS start_date
    FROM "main"."measurement" AS e
    WHERE
      CAST(e."MEASUREMENT_CONCEPT_ID" AS BIGINT) IN (
        SELECT
          concept_id
        FROM wanted
      )
    UNION ALL
    SELECT
      CAST(e."PERSON_ID" AS BIGINT) AS person_id,
      CAST(e."OBSERVATION_DATE" AS DATE) AS start_date
    FROM "main"."observation" AS e
    WHERE
      CAST(e."OBSERVATION_CONCEPT_ID" AS BIGINT) IN (
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
LEFT JOIN "main"."observation_period" AS op
  ON op."PERSON_ID" = f.person_id
  AND f.start_date BETWEEN CAST(op."OBSERVATION_PERIOD_START_DATE" AS DATE) AND CAST(op."OBSERVATION_PERIOD_END_DATE" AS DATE)
GROUP BY
  f.person_id,
  f.start_date

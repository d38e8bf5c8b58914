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
      IFF(_u.pos = _u_2.pos_2, _u_2.concept_id, NULL) AS concept_id
    FROM TABLE(FLATTEN(INPUT => ARRAY_GENERATE_RANGE(0, (
      GREATEST(ARRAY_SIZE(CAST(:concept_ids AS ARRAY(BIGINT)))) - 1
    ) + 1))) AS _u(seq, key, path, index, pos, this)
    CROSS JOIN TABLE(FLATTEN(INPUT => CAST(:concept_ids AS ARRAY(BIGINT)))) AS _u_2(seq, key, path, pos_2, concept_id, this)
    WHERE
      _u.pos = _u_2.pos_2
      OR (
        _u.pos > (
          ARRAY_SIZE(CAST(:concept_ids AS ARRAY(BIGINT))) - 1
        )
        AND _u_2.pos_2 = (
          ARRAY_SIZE(CAST(:concept_ids AS ARRAY(BIGINT))) - 1
        )
      )
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

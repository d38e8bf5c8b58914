WITH src AS (
  SELECT
    e."VISIT_OCCURRENCE_ID" AS row_key,
    TRY_CAST(e."PERSON_ID" AS BIGINT) AS person_id,
    e."PERSON_ID" AS person_raw,
    TRY_CAST(e."VISIT_START_DATE" AS DATE) AS start_date,
    e."VISIT_START_DATE" AS start_raw,
    TRY_CAST(e."VISIT_START_DATETIME" AS TIMESTAMP) AS start_datetime,
    e."VISIT_START_DATETIME" AS start_datetime_raw,
    TRY_CAST(e."VISIT_END_DATE" AS DATE) AS end_date,
    TRY_CAST(e."VISIT_CONCEPT_ID" AS BIGINT) AS concept_id,
    NULLIF(TRIM(CAST(NULL AS TEXT)), '') AS source_value,
    TRY_CAST(NULL AS BIGINT) AS source_concept_id,
    CAST(NULL AS DOUBLE) AS value_read,
    "value_raw" AS value_raw,
    TRY_CAST(e."VISIT_OCCURRENCE_ID" AS BIGINT) AS visit_ref,
    "unit_concept_id" AS unit_concept_id,
    NULLIF(TRIM(CAST("unit_source_value" AS TEXT)), '') AS unit_source_value,
    CAST(NULL AS TEXT) AS cast_error,
    1 AS dup_rank
  FROM "main"."visit_occurrence" AS e
  WHERE
    1 = 1
), src_values AS (
  SELECT
    src.*,
    CASE WHEN ABS(value_read) <= "float32_max" THEN value_read END AS numeric_value,
    CASE
      WHEN NOT value_read IS NULL AND NOT ABS(value_read) <= "float32_max"
      THEN "value_dropped_note"
      WHEN value_read IS NULL AND TRIM(CAST(value_raw AS TEXT)) <> ''
      THEN "value_unparseable_note"
    END AS value_note,
    CASE
      WHEN NOT start_datetime_raw IS NULL AND start_datetime IS NULL
      THEN 'visit_start_datetime unparseable: visit_start_date used'
      WHEN CAST(start_datetime AS DATE) <> start_date
      THEN 'visit_start_datetime ignored (its date is not visit_start_date): visit_start_date used'
    END AS datetime_note
  FROM src
)
SELECT
  s.person_id AS subject_id,
  CASE
    WHEN CAST(s.start_datetime AS DATE) = s.start_date
    THEN CAST(s.start_datetime AS TIMESTAMP)
    ELSE CAST(s.start_date AS TIMESTAMP)
  END AS time,
  CASE
    WHEN NOT c."CONCEPT_ID" IS NULL
    THEN c."VOCABULARY_ID" || '/' || c."CONCEPT_CODE"
    WHEN NOT s.concept_id IS NULL AND s.concept_id <> 0
    THEN 'OMOP/' || CAST(s.concept_id AS TEXT)
    WHEN NOT s.source_value IS NULL
    THEN COALESCE(sc."VOCABULARY_ID", 'SOURCE_VISIT') || '/' || s.source_value
  END AS code,
  s.numeric_value,
  CASE
    WHEN NOT s.visit_ref IS NULL
    AND EXISTS(
      SELECT
        1
      FROM "main"."visit_occurrence" AS v
      WHERE
        v."VISIT_OCCURRENCE_ID" = s.visit_ref AND v."PERSON_ID" = s.person_id
    )
    THEN s.visit_ref
  END AS visit_id,
  'visit' AS domain,
  CASE WHEN s.concept_id <> 0 THEN s.concept_id END AS concept_id,
  CAST(s.end_date AS TIMESTAMP) AS end_time,
  CASE
    WHEN s.source_value IS NULL
    THEN NULL
    WHEN NOT sc."CONCEPT_ID" IS NULL
    THEN sc."VOCABULARY_ID" || '/' || s.source_value
    WHEN c."CONCEPT_CODE" = s.source_value
    THEN c."VOCABULARY_ID" || '/' || s.source_value
    ELSE 'SOURCE_VISIT' || '/' || s.source_value
  END AS source_code,
  CASE WHEN s.source_concept_id <> 0 THEN s.source_concept_id END AS source_concept_id,
  CASE
    WHEN s.numeric_value IS NULL
    THEN NULL
    WHEN uc."VOCABULARY_ID" = 'UCUM'
    THEN uc."CONCEPT_CODE"
    ELSE COALESCE(s.unit_source_value, "unit_name")
  END AS unit,
  CAST(s.row_key AS TEXT) AS row_key,
  CASE
    WHEN s.person_raw IS NULL
    THEN 'null person_id'
    WHEN NOT s.cast_error IS NULL
    THEN s.cast_error
    WHEN s.person_id IS NULL
    THEN 'person_id is not an integer'
    WHEN NOT s.row_key IS NULL AND s.dup_rank > 1
    THEN 'duplicate visit_occurrence_id'
    WHEN ps.person_raw IS NULL
    THEN 'person_id not in person table'
    WHEN NOT ps.reason IS NULL
    THEN 'person quarantined (' || ps.reason || ')'
    WHEN s.start_raw IS NULL
    THEN 'null visit_start_date'
    WHEN s.start_date IS NULL
    THEN 'unparseable visit_start_date'
    WHEN s.start_date < CAST(:valid_start AS DATE)
    OR s.start_date > CAST(:valid_end AS DATE)
    THEN 'visit_start_date outside the valid dates 1800-01-01..2999-12-31'
    WHEN s.start_date < ps.birth_floor
    THEN 'visit_start_date before birth'
    WHEN s.start_date > ps.death_date + CAST(:after_death_days AS INT)
    THEN 'visit_start_date more than 60 days after death'
    WHEN c."CONCEPT_ID" IS NULL
    AND (
      s.concept_id IS NULL OR s.concept_id = 0
    )
    AND s.source_value IS NULL
    THEN 'no concept_id and no source value'
  END AS reason,
  CASE
    WHEN s.datetime_note IS NULL
    THEN s.value_note
    WHEN s.value_note IS NULL
    THEN s.datetime_note
    ELSE s.datetime_note || '; ' || s.value_note
  END AS time_note,
  CASE
    WHEN ps.first_observed IS NULL
    OR s.start_date < ps.first_observed
    OR s.start_date > ps.last_observed
    OR NOT g.person_id IS NULL
    THEN 1
    ELSE 0
  END AS outside_op
FROM src_values AS s
LEFT JOIN (
  SELECT
    b.person_id,
    b.person_raw,
    b.birth_date,
    b.birth_floor,
    b.sex,
    b.source_id,
    b.dup_rank,
    b.first_observed,
    b.last_observed,
    CASE
      WHEN b.death_date >= CAST(:valid_start AS DATE)
      AND b.death_date <= CAST(:valid_end AS DATE)
      AND (
        b.birth_floor IS NULL OR b.death_date >= b.birth_floor
      )
      THEN b.death_date
    END AS death_date,
    CASE
      WHEN b.person_raw IS NULL
      THEN 'null person_id'
      WHEN NOT b.cast_error IS NULL
      THEN b.cast_error
      WHEN b.person_id IS NULL
      THEN 'person_id is not an integer'
      WHEN b.dup_rank > 1
      THEN 'duplicate person_id'
      WHEN b.yob_raw IS NULL
      THEN 'null year_of_birth'
      WHEN b.birth_date IS NULL
      THEN 'year_of_birth is not a year'
      WHEN b.birth_date < CAST(:valid_start AS DATE)
      OR b.birth_date > CAST(:valid_end AS DATE)
      THEN 'birth date outside the valid dates 1800-01-01..2999-12-31'
      WHEN b.birth_floor > b.last_observed
      THEN 'birth after the end of the last observation_period'
    END AS reason,
    CASE
      WHEN NOT b.birth_dt IS NULL OR b.birth_date IS NULL
      THEN NULL
      WHEN NOT b.mob IS NULL AND b.mob <> 0 AND NOT b.month_ok
      THEN 'month_of_birth not 1-12: July 1st of year_of_birth used'
      WHEN b.month_ok AND NOT b.dob IS NULL AND b.dob <> 0 AND NOT b.day_ok
      THEN 'day_of_birth not a day of month_of_birth: 1st of the month used'
    END AS birth_note,
    CASE
      WHEN b.death_date IS NULL OR b.birth_date IS NULL
      THEN NULL
      WHEN b.death_date < CAST(:valid_start AS DATE)
      OR b.death_date > CAST(:valid_end AS DATE)
      THEN 'death_date outside the valid dates: not used'
      WHEN b.death_date < b.birth_floor
      THEN 'death_date before birth: not used'
    END AS death_note
  FROM (
    SELECT
      m.*,
      CASE
        WHEN NOT m.birth_dt IS NULL
        THEN m.birth_dt
        WHEN m.year_ok
        THEN MAKE_DATE(
          m.yob,
          CASE WHEN m.month_ok THEN m.mob ELSE 7 END,
          CASE WHEN m.day_ok THEN m.dob ELSE 1 END
        )
      END AS birth_date,
      CASE
        WHEN NOT m.birth_dt IS NULL
        THEN m.birth_dt
        WHEN m.year_ok
        THEN MAKE_DATE(
          m.yob,
          CASE WHEN m.month_ok THEN m.mob ELSE 1 END,
          CASE WHEN m.day_ok THEN m.dob ELSE 1 END
        )
      END AS birth_floor
    FROM (
      SELECT
        r.*,
        COALESCE(r.yob BETWEEN 1 AND 9999, FALSE) AS year_ok,
        COALESCE(r.yob BETWEEN 1 AND 9999 AND r.mob BETWEEN 1 AND 12, FALSE) AS month_ok,
        CASE
          WHEN NOT COALESCE(r.yob BETWEEN 1 AND 9999 AND r.mob BETWEEN 1 AND 12, FALSE)
          THEN FALSE
          WHEN r.dob BETWEEN 1 AND 28
          THEN TRUE
          WHEN r.dob BETWEEN 29 AND 31
          THEN r.dob <= EXTRACT(DAY FROM MAKE_DATE(r.yob, r.mob, 1) + INTERVAL '1' MONTH - INTERVAL '1' DAY)
          ELSE FALSE
        END AS day_ok
      FROM (
        SELECT
          TRY_CAST(p."PERSON_ID" AS BIGINT) AS person_id,
          p."PERSON_ID" AS person_raw,
          TRY_CAST(p."YEAR_OF_BIRTH" AS INT) AS yob,
          p."YEAR_OF_BIRTH" AS yob_raw,
          TRY_CAST(p."MONTH_OF_BIRTH" AS INT) AS mob,
          TRY_CAST(p."DAY_OF_BIRTH" AS INT) AS dob,
          TRY_CAST(p."BIRTH_DATETIME" AS DATE) AS birth_dt,
          CASE
            WHEN TRY_CAST(p."GENDER_CONCEPT_ID" AS BIGINT) = 8532
            THEN 'F'
            WHEN TRY_CAST(p."GENDER_CONCEPT_ID" AS BIGINT) = 8507
            THEN 'M'
            WHEN UPPER(CAST(p."GENDER_SOURCE_VALUE" AS TEXT)) IN ('F', 'FEMALE')
            THEN 'F'
            WHEN UPPER(CAST(p."GENDER_SOURCE_VALUE" AS TEXT)) IN ('M', 'MALE')
            THEN 'M'
            ELSE 'U'
          END AS sex,
          CAST(p."PERSON_SOURCE_VALUE" AS TEXT) AS source_id,
          CAST(NULL AS TEXT) AS cast_error,
          ROW_NUMBER() OVER (
            PARTITION BY TRY_CAST(p."PERSON_ID" AS BIGINT)
            ORDER BY CASE WHEN TRY_CAST(p."YEAR_OF_BIRTH" AS INT) IS NULL THEN 1 ELSE 0 END, (
              CASE WHEN p."PERSON_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."GENDER_CONCEPT_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."YEAR_OF_BIRTH" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."MONTH_OF_BIRTH" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."DAY_OF_BIRTH" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."BIRTH_DATETIME" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."RACE_CONCEPT_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."ETHNICITY_CONCEPT_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."LOCATION_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."PROVIDER_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."CARE_SITE_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."PERSON_SOURCE_VALUE" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."GENDER_SOURCE_VALUE" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."GENDER_SOURCE_CONCEPT_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."RACE_SOURCE_VALUE" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."RACE_SOURCE_CONCEPT_ID" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."ETHNICITY_SOURCE_VALUE" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."ETHNICITY_SOURCE_CONCEPT_ID" IS NULL THEN 1 ELSE 0 END
            ), p."PERSON_ID", p."GENDER_CONCEPT_ID", p."YEAR_OF_BIRTH", p."MONTH_OF_BIRTH", p."DAY_OF_BIRTH", p."BIRTH_DATETIME", p."RACE_CONCEPT_ID", p."ETHNICITY_CONCEPT_ID", p."LOCATION_ID", p."PROVIDER_ID", p."CARE_SITE_ID", p."PERSON_SOURCE_VALUE", p."GENDER_SOURCE_VALUE", p."GENDER_SOURCE_CONCEPT_ID", p."RACE_SOURCE_VALUE", p."RACE_SOURCE_CONCEPT_ID", p."ETHNICITY_SOURCE_VALUE", p."ETHNICITY_SOURCE_CONCEPT_ID"
          ) AS dup_rank,
          dth.death_date,
          obs.first_observed,
          obs.last_observed
        FROM "main"."person" AS p
        LEFT JOIN (
          SELECT
            CAST(NULL AS BIGINT) AS person_id,
            CAST(NULL AS DATE) AS death_date
          WHERE
            1 = 0
        ) AS dth
          ON dth.person_id = TRY_CAST(p."PERSON_ID" AS BIGINT)
        LEFT JOIN (
          SELECT
            TRY_CAST(o."PERSON_ID" AS BIGINT) AS person_id,
            MIN(TRY_CAST(o."OBSERVATION_PERIOD_START_DATE" AS DATE)) AS first_observed,
            MAX(TRY_CAST(o."OBSERVATION_PERIOD_END_DATE" AS DATE)) AS last_observed
          FROM "main"."observation_period" AS o
          GROUP BY
            TRY_CAST(o."PERSON_ID" AS BIGINT)
        ) AS obs
          ON obs.person_id = TRY_CAST(p."PERSON_ID" AS BIGINT)
        WHERE
          1 = 1
      ) AS r
    ) AS m
  ) AS b
) AS ps
  ON ps.person_id = s.person_id AND ps.dup_rank = 1
LEFT JOIN (
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
) AS g
  ON g.person_id = s.person_id
  AND s.start_date > g.gap_start
  AND s.start_date < g.gap_end
LEFT JOIN "main"."concept" AS c
  ON c."CONCEPT_ID" = s.concept_id AND s.concept_id <> 0
LEFT JOIN "main"."concept" AS sc
  ON sc."CONCEPT_ID" = s.source_concept_id AND s.source_concept_id <> 0
LEFT JOIN "main"."concept" AS uc
  ON uc."CONCEPT_ID" = s.unit_concept_id AND s.unit_concept_id <> 0

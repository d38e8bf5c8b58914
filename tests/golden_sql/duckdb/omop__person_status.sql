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

SELECT
  ps.person_id AS subject_id,
  ps.birth_date,
  ps.sex,
  ps.death_date,
  ps.source_id,
  CAST(ps.person_raw AS VARCHAR) AS row_key,
  ps.reason,
  ps.birth_note,
  ps.death_note
FROM (
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
      WHEN b.cast_error IS NOT NULL
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
      WHEN b.birth_dt IS NOT NULL OR b.birth_date IS NULL
      THEN NULL
      WHEN b.mob IS NOT NULL AND b.mob <> 0 AND NOT b.month_ok
      THEN 'month_of_birth not 1-12: July 1st of year_of_birth used'
      WHEN b.month_ok AND b.dob IS NOT NULL AND b.dob <> 0 AND NOT b.day_ok
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
        WHEN m.birth_dt IS NOT NULL
        THEN m.birth_dt
        WHEN m.year_ok
        THEN MAKE_DATE(
          m.yob,
          CASE WHEN m.month_ok THEN m.mob ELSE 7 END,
          CASE WHEN m.day_ok THEN m.dob ELSE 1 END
        )
      END AS birth_date,
      CASE
        WHEN m.birth_dt IS NOT NULL
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
          THEN r.dob <= EXTRACT(DAY FROM MAKE_DATE(r.yob, r.mob, 1) + INTERVAL '1 MONTH' - INTERVAL '1 DAY')
          ELSE FALSE
        END AS day_ok
      FROM (
        SELECT
          CAST(p."person_id" AS BIGINT) AS person_id,
          p."person_id" AS person_raw,
          CAST(p."year_of_birth" AS INT) AS yob,
          p."year_of_birth" AS yob_raw,
          CAST(p."month_of_birth" AS INT) AS mob,
          CAST(p."day_of_birth" AS INT) AS dob,
          CAST(p."birth_datetime" AS DATE) AS birth_dt,
          CASE
            WHEN CAST(p."gender_concept_id" AS BIGINT) = 8532
            THEN 'F'
            WHEN CAST(p."gender_concept_id" AS BIGINT) = 8507
            THEN 'M'
            WHEN UPPER(CAST(p."gender_source_value" AS VARCHAR)) IN ('F', 'FEMALE')
            THEN 'F'
            WHEN UPPER(CAST(p."gender_source_value" AS VARCHAR)) IN ('M', 'MALE')
            THEN 'M'
            ELSE 'U'
          END AS sex,
          CAST(p."person_source_value" AS VARCHAR) AS source_id,
          CAST(NULL AS VARCHAR) AS cast_error,
          ROW_NUMBER() OVER (
            PARTITION BY CAST(p."person_id" AS BIGINT)
            ORDER BY CASE WHEN CAST(p."year_of_birth" AS INT) IS NULL THEN 1 ELSE 0 END, (
              CASE WHEN p."person_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."gender_concept_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."year_of_birth" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."month_of_birth" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."day_of_birth" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."birth_datetime" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."race_concept_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."ethnicity_concept_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."location_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."provider_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."care_site_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."person_source_value" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."gender_source_value" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."gender_source_concept_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."race_source_value" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."race_source_concept_id" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."ethnicity_source_value" IS NULL THEN 1 ELSE 0 END + CASE WHEN p."ethnicity_source_concept_id" IS NULL THEN 1 ELSE 0 END
            ), p."person_id", p."gender_concept_id", p."year_of_birth", p."month_of_birth", p."day_of_birth", p."birth_datetime", p."race_concept_id", p."ethnicity_concept_id", p."location_id", p."provider_id", p."care_site_id", p."person_source_value", p."gender_source_value", p."gender_source_concept_id", p."race_source_value", p."race_source_concept_id", p."ethnicity_source_value", p."ethnicity_source_concept_id"
          ) AS dup_rank,
          dth.death_date,
          obs.first_observed,
          obs.last_observed
        FROM "bench_sql_dialects"."person" AS p
        LEFT JOIN (
          SELECT
            CAST(d."person_id" AS BIGINT) AS person_id,
            MIN(CAST(d."death_date" AS DATE)) AS death_date
          FROM "bench_sql_dialects"."death" AS d
          GROUP BY
            CAST(d."person_id" AS BIGINT)
        ) AS dth
          ON dth.person_id = CAST(p."person_id" AS BIGINT)
        LEFT JOIN (
          SELECT
            CAST(o."person_id" AS BIGINT) AS person_id,
            MIN(CAST(o."observation_period_start_date" AS DATE)) AS first_observed,
            MAX(CAST(o."observation_period_end_date" AS DATE)) AS last_observed
          FROM "bench_sql_dialects"."observation_period" AS o
          GROUP BY
            CAST(o."person_id" AS BIGINT)
        ) AS obs
          ON obs.person_id = CAST(p."person_id" AS BIGINT)
        WHERE
          1 = 1
      ) AS r
    ) AS m
  ) AS b
) AS ps

WITH src AS (
  SELECT
    e.`visit_occurrence_id` AS row_key,
    CAST(e.`person_id` AS BIGINT) AS person_id,
    e.`person_id` AS person_raw,
    CAST(e.`visit_start_date` AS DATE) AS start_date,
    e.`visit_start_date` AS start_raw,
    CAST(e.`visit_start_datetime` AS TIMESTAMP_NTZ) AS start_datetime,
    e.`visit_start_datetime` AS start_datetime_raw,
    CAST(e.`visit_end_date` AS DATE) AS end_date,
    CAST(e.`visit_concept_id` AS BIGINT) AS concept_id,
    NULLIF(TRIM(CAST(NULL AS STRING)), '') AS source_value,
    CAST(NULL AS BIGINT) AS source_concept_id,
    CAST(NULL AS DOUBLE) AS value_read,
    `value_raw` AS value_raw,
    CAST(e.`visit_occurrence_id` AS BIGINT) AS visit_ref,
    `unit_concept_id` AS unit_concept_id,
    NULLIF(TRIM(CAST(`unit_source_value` AS STRING)), '') AS unit_source_value,
    CAST(NULL AS STRING) AS cast_error,
    1 AS dup_rank
  FROM `bench_sql_dialects`.`visit_occurrence` AS e
  WHERE
    1 = 1
), src_values AS (
  SELECT
    src.*,
    CASE WHEN ABS(value_read) <= `float32_max` THEN value_read END AS numeric_value,
    CASE
      WHEN value_read IS NOT NULL AND NOT ABS(value_read) <= `float32_max`
      THEN `value_dropped_note`
      WHEN value_read IS NULL AND TRIM(CAST(value_raw AS STRING)) <> ''
      THEN `value_unparseable_note`
    END AS value_note,
    CASE
      WHEN start_datetime_raw IS NOT NULL AND start_datetime IS NULL
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
    THEN CAST(s.start_datetime AS TIMESTAMP_NTZ)
    ELSE CAST(s.start_date AS TIMESTAMP_NTZ)
  END AS time,
  CASE
    WHEN c.`concept_id` IS NOT NULL
    THEN c.`vocabulary_id` || '/' || c.`concept_code`
    WHEN s.concept_id IS NOT NULL AND s.concept_id <> 0
    THEN 'OMOP/' || CAST(s.concept_id AS STRING)
    WHEN s.source_value IS NOT NULL
    THEN COALESCE(sc.`vocabulary_id`, 'SOURCE_VISIT') || '/' || s.source_value
  END AS code,
  s.numeric_value,
  CASE
    WHEN s.visit_ref IS NOT NULL
    AND EXISTS(
      SELECT
        1
      FROM `bench_sql_dialects`.`visit_occurrence` AS v
      WHERE
        v.`visit_occurrence_id` = s.visit_ref AND v.`person_id` = s.person_id
    )
    THEN s.visit_ref
  END AS visit_id,
  'visit' AS domain,
  CASE WHEN s.concept_id <> 0 THEN s.concept_id END AS concept_id,
  CAST(s.end_date AS TIMESTAMP_NTZ) AS end_time,
  CASE
    WHEN s.source_value IS NULL
    THEN NULL
    WHEN sc.`concept_id` IS NOT NULL
    THEN sc.`vocabulary_id` || '/' || s.source_value
    WHEN c.`concept_code` = s.source_value
    THEN c.`vocabulary_id` || '/' || s.source_value
    ELSE 'SOURCE_VISIT' || '/' || s.source_value
  END AS source_code,
  CASE WHEN s.source_concept_id <> 0 THEN s.source_concept_id END AS source_concept_id,
  CASE
    WHEN s.numeric_value IS NULL
    THEN NULL
    WHEN uc.`vocabulary_id` = 'UCUM'
    THEN uc.`concept_code`
    ELSE COALESCE(s.unit_source_value, `unit_name`)
  END AS unit,
  CAST(s.row_key AS STRING) AS row_key,
  CASE
    WHEN s.person_raw IS NULL
    THEN 'null person_id'
    WHEN s.cast_error IS NOT NULL
    THEN s.cast_error
    WHEN s.person_id IS NULL
    THEN 'person_id is not an integer'
    WHEN s.row_key IS NOT NULL AND s.dup_rank > 1
    THEN 'duplicate visit_occurrence_id'
    WHEN ps.person_raw IS NULL
    THEN 'person_id not in person table'
    WHEN ps.reason IS NOT NULL
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
    WHEN c.`concept_id` IS NULL
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
    OR g.person_id IS NOT NULL
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
          THEN r.dob <= EXTRACT(DAY FROM MAKE_DATE(r.yob, r.mob, 1) + INTERVAL '1' MONTH - INTERVAL '1' DAY)
          ELSE FALSE
        END AS day_ok
      FROM (
        SELECT
          CAST(p.`person_id` AS BIGINT) AS person_id,
          p.`person_id` AS person_raw,
          CAST(p.`year_of_birth` AS INT) AS yob,
          p.`year_of_birth` AS yob_raw,
          CAST(p.`month_of_birth` AS INT) AS mob,
          CAST(p.`day_of_birth` AS INT) AS dob,
          CAST(p.`birth_datetime` AS DATE) AS birth_dt,
          CASE
            WHEN CAST(p.`gender_concept_id` AS BIGINT) = 8532
            THEN 'F'
            WHEN CAST(p.`gender_concept_id` AS BIGINT) = 8507
            THEN 'M'
            WHEN UPPER(CAST(p.`gender_source_value` AS STRING)) IN ('F', 'FEMALE')
            THEN 'F'
            WHEN UPPER(CAST(p.`gender_source_value` AS STRING)) IN ('M', 'MALE')
            THEN 'M'
            ELSE 'U'
          END AS sex,
          CAST(p.`person_source_value` AS STRING) AS source_id,
          CAST(NULL AS STRING) AS cast_error,
          ROW_NUMBER() OVER (
            PARTITION BY CAST(p.`person_id` AS BIGINT)
            ORDER BY CASE WHEN CAST(p.`year_of_birth` AS INT) IS NULL THEN 1 ELSE 0 END NULLS LAST, (
              CASE WHEN p.`person_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`gender_concept_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`year_of_birth` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`month_of_birth` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`day_of_birth` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`birth_datetime` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`race_concept_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`ethnicity_concept_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`location_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`provider_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`care_site_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`person_source_value` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`gender_source_value` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`gender_source_concept_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`race_source_value` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`race_source_concept_id` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`ethnicity_source_value` IS NULL THEN 1 ELSE 0 END + CASE WHEN p.`ethnicity_source_concept_id` IS NULL THEN 1 ELSE 0 END
            ) NULLS LAST, p.`person_id` NULLS LAST, p.`gender_concept_id` NULLS LAST, p.`year_of_birth` NULLS LAST, p.`month_of_birth` NULLS LAST, p.`day_of_birth` NULLS LAST, p.`birth_datetime` NULLS LAST, p.`race_concept_id` NULLS LAST, p.`ethnicity_concept_id` NULLS LAST, p.`location_id` NULLS LAST, p.`provider_id` NULLS LAST, p.`care_site_id` NULLS LAST, p.`person_source_value` NULLS LAST, p.`gender_source_value` NULLS LAST, p.`gender_source_concept_id` NULLS LAST, p.`race_source_value` NULLS LAST, p.`race_source_concept_id` NULLS LAST, p.`ethnicity_source_value` NULLS LAST, p.`ethnicity_source_concept_id` NULLS LAST
          ) AS dup_rank,
          dth.death_date,
          obs.first_observed,
          obs.last_observed
        FROM `bench_sql_dialects`.`person` AS p
        LEFT JOIN (
          SELECT
            CAST(d.`person_id` AS BIGINT) AS person_id,
            MIN(CAST(d.`death_date` AS DATE)) AS death_date
          FROM `bench_sql_dialects`.`death` AS d
          GROUP BY
            CAST(d.`person_id` AS BIGINT)
        ) AS dth
          ON dth.person_id = CAST(p.`person_id` AS BIGINT)
        LEFT JOIN (
          SELECT
            CAST(o.`person_id` AS BIGINT) AS person_id,
            MIN(CAST(o.`observation_period_start_date` AS DATE)) AS first_observed,
            MAX(CAST(o.`observation_period_end_date` AS DATE)) AS last_observed
          FROM `bench_sql_dialects`.`observation_period` AS o
          GROUP BY
            CAST(o.`person_id` AS BIGINT)
        ) AS obs
          ON obs.person_id = CAST(p.`person_id` AS BIGINT)
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
        ORDER BY p.start_date NULLS LAST, p.end_date NULLS LAST
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
      ) AS covered_until
    FROM (
      SELECT
        CAST(o.`person_id` AS BIGINT) AS person_id,
        CAST(o.`observation_period_start_date` AS DATE) AS start_date,
        CAST(o.`observation_period_end_date` AS DATE) AS end_date
      FROM `bench_sql_dialects`.`observation_period` AS o
    ) AS p
    WHERE
      p.start_date IS NOT NULL AND p.end_date IS NOT NULL
  ) AS w
  WHERE
    w.start_date > w.covered_until
) AS g
  ON g.person_id = s.person_id
  AND s.start_date > g.gap_start
  AND s.start_date < g.gap_end
LEFT JOIN `bench_sql_dialects`.`concept` AS c
  ON c.`concept_id` = s.concept_id AND s.concept_id <> 0
LEFT JOIN `bench_sql_dialects`.`concept` AS sc
  ON sc.`concept_id` = s.source_concept_id AND s.source_concept_id <> 0
LEFT JOIN `bench_sql_dialects`.`concept` AS uc
  ON uc.`concept_id` = s.unit_concept_id AND s.unit_concept_id <> 0

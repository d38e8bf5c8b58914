WITH target AS (
  SELECT
    INLINE(ARRAYS_ZIP(CAST(:t_subject AS ARRAY<BIGINT>), CAST(:t_date AS ARRAY<DATE>))) AS (subject_id, index_date)
), occ AS (
  SELECT
    CAST(e.`PERSON_ID` AS BIGINT) AS person_id,
    CAST(e.`CONDITION_START_DATE` AS DATE) AS start_date
  FROM `main`.`condition_occurrence` AS e
  WHERE
    CAST(e.`CONDITION_CONCEPT_ID` AS BIGINT) IN (
      SELECT
        EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
      UNION
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS BIGINT)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS BIGINT) IN (
          SELECT
            EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
        )
    )
  UNION ALL
  SELECT
    CAST(e.`PERSON_ID` AS BIGINT) AS person_id,
    CAST(e.`DRUG_EXPOSURE_START_DATE` AS DATE) AS start_date
  FROM `main`.`drug_exposure` AS e
  WHERE
    CAST(e.`DRUG_CONCEPT_ID` AS BIGINT) IN (
      SELECT
        EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
      UNION
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS BIGINT)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS BIGINT) IN (
          SELECT
            EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
        )
    )
  UNION ALL
  SELECT
    CAST(e.`PERSON_ID` AS BIGINT) AS person_id,
    CAST(e.`PROCEDURE_DATE` AS DATE) AS start_date
  FROM `main`.`procedure_occurrence` AS e
  WHERE
    CAST(e.`PROCEDURE_CONCEPT_ID` AS BIGINT) IN (
      SELECT
        EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
      UNION
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS BIGINT)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS BIGINT) IN (
          SELECT
            EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
        )
    )
  UNION ALL
  SELECT
    CAST(e.`PERSON_ID` AS BIGINT) AS person_id,
    CAST(e.`MEASUREMENT_DATE` AS DATE) AS start_date
  FROM `main`.`measurement` AS e
  WHERE
    CAST(e.`MEASUREMENT_CONCEPT_ID` AS BIGINT) IN (
      SELECT
        EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
      UNION
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS BIGINT)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS BIGINT) IN (
          SELECT
            EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
        )
    )
  UNION ALL
  SELECT
    CAST(e.`PERSON_ID` AS BIGINT) AS person_id,
    CAST(e.`OBSERVATION_DATE` AS DATE) AS start_date
  FROM `main`.`observation` AS e
  WHERE
    CAST(e.`OBSERVATION_CONCEPT_ID` AS BIGINT) IN (
      SELECT
        EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
      UNION
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS BIGINT)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS BIGINT) IN (
          SELECT
            EXPLODE(CAST(:concept_ids AS ARRAY<BIGINT>))
        )
    )
), op AS (
  SELECT
    CAST(o.`PERSON_ID` AS BIGINT) AS person_id,
    CAST(o.`OBSERVATION_PERIOD_START_DATE` AS DATE) AS op_start,
    CAST(o.`OBSERVATION_PERIOD_END_DATE` AS DATE) AS op_end
  FROM `main`.`observation_period` AS o
  WHERE
    CAST(o.`PERSON_ID` AS BIGINT) IN (
      SELECT
        subject_id
      FROM target
    )
), scored AS (
  SELECT
    t.subject_id,
    t.index_date,
    (
      SELECT
        MAX(op.op_start)
      FROM op
      WHERE
        op.person_id = t.subject_id AND t.index_date BETWEEN op.op_start AND op.op_end
    ) AS op_start,
    (
      SELECT
        MAX(op.op_end)
      FROM op
      WHERE
        op.person_id = t.subject_id AND t.index_date BETWEEN op.op_start AND op.op_end
    ) AS op_end,
    EXISTS(
      SELECT
        1
      FROM occ
      WHERE
        occ.person_id = t.subject_id
        AND occ.start_date < t.index_date + CAST(:tar_start AS INT)
        AND occ.start_date >= t.index_date - CAST(:lookback AS INT)
    ) AS prior_outcome,
    (
      SELECT
        MIN(occ.start_date)
      FROM occ
      WHERE
        occ.person_id = t.subject_id
        AND occ.start_date >= t.index_date + CAST(:tar_start AS INT)
        AND occ.start_date <= t.index_date + CAST(:tar_end AS INT)
    ) AS outcome_date
  FROM target AS t
)
SELECT
  subject_id,
  CAST(index_date AS TIMESTAMP_NTZ) AS index_date,
  CAST(CASE
    WHEN outcome_date IS NOT NULL AND outcome_date <= COALESCE(op_end, outcome_date)
    THEN 1
    ELSE 0
  END AS SMALLINT) AS label,
  CAST(outcome_date AS TIMESTAMP_NTZ) AS outcome_date,
  CASE
    WHEN op_start IS NULL
    THEN 'index date outside every observation period'
    WHEN :remove_prior AND prior_outcome
    THEN 'outcome before the time at risk'
    WHEN index_date - op_start < :min_prior
    THEN 'too little observation before index'
    WHEN LEAST(op_end, index_date + CAST(:tar_end AS INT)) - (
      index_date + CAST(:tar_start AS INT)
    ) + 1 < :min_tar
    AND NOT (
      :include_all_outcomes AND outcome_date IS NOT NULL AND outcome_date <= op_end
    )
    THEN 'too little time at risk'
  END AS excluded
FROM scored
ORDER BY
  subject_id NULLS LAST,
  index_date NULLS LAST

WITH target AS (
  SELECT
    IF(pos = pos_2, subject_id, NULL) AS subject_id,
    IF(pos = pos_3, index_date, NULL) AS index_date
  FROM UNNEST(GENERATE_ARRAY(
    0,
    GREATEST(
      ARRAY_LENGTH(CAST(:t_subject AS ARRAY<INT64>)),
      ARRAY_LENGTH(CAST(:t_date AS ARRAY<DATE>))
    ) - 1
  )) AS pos
  CROSS JOIN UNNEST(CAST(:t_subject AS ARRAY<INT64>)) AS subject_id WITH OFFSET AS pos_2
  CROSS JOIN UNNEST(CAST(:t_date AS ARRAY<DATE>)) AS index_date WITH OFFSET AS pos_3
  WHERE
    (
      pos = pos_2
      OR (
        pos > (
          ARRAY_LENGTH(CAST(:t_subject AS ARRAY<INT64>)) - 1
        )
        AND pos_2 = (
          ARRAY_LENGTH(CAST(:t_subject AS ARRAY<INT64>)) - 1
        )
      )
    )
    AND (
      pos = pos_3
      OR (
        pos > (
          ARRAY_LENGTH(CAST(:t_date AS ARRAY<DATE>)) - 1
        )
        AND pos_3 = (
          ARRAY_LENGTH(CAST(:t_date AS ARRAY<DATE>)) - 1
        )
      )
    )
), occ AS (
  SELECT
    CAST(e.`PERSON_ID` AS INT64) AS person_id,
    CAST(e.`CONDITION_START_DATE` AS DATE) AS start_date
  FROM `main`.`condition_occurrence` AS e
  WHERE
    CAST(e.`CONDITION_CONCEPT_ID` AS INT64) IN (
      SELECT
        IF(pos = pos_2, col, NULL) AS col
      FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
      CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
      WHERE
        pos = pos_2
        OR (
          pos > (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
          AND pos_2 = (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
        )
      UNION DISTINCT
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS INT64)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS INT64) IN (
          SELECT
            IF(pos = pos_2, col, NULL) AS col
          FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
          CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
          WHERE
            pos = pos_2
            OR (
              pos > (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
              AND pos_2 = (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
            )
        )
    )
  UNION ALL
  SELECT
    CAST(e.`PERSON_ID` AS INT64) AS person_id,
    CAST(e.`DRUG_EXPOSURE_START_DATE` AS DATE) AS start_date
  FROM `main`.`drug_exposure` AS e
  WHERE
    CAST(e.`DRUG_CONCEPT_ID` AS INT64) IN (
      SELECT
        IF(pos = pos_2, col, NULL) AS col
      FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
      CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
      WHERE
        pos = pos_2
        OR (
          pos > (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
          AND pos_2 = (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
        )
      UNION DISTINCT
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS INT64)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS INT64) IN (
          SELECT
            IF(pos = pos_2, col, NULL) AS col
          FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
          CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
          WHERE
            pos = pos_2
            OR (
              pos > (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
              AND pos_2 = (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
            )
        )
    )
  UNION ALL
  SELECT
    CAST(e.`PERSON_ID` AS INT64) AS person_id,
    CAST(e.`PROCEDURE_DATE` AS DATE) AS start_date
  FROM `main`.`procedure_occurrence` AS e
  WHERE
    CAST(e.`PROCEDURE_CONCEPT_ID` AS INT64) IN (
      SELECT
        IF(pos = pos_2, col, NULL) AS col
      FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
      CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
      WHERE
        pos = pos_2
        OR (
          pos > (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
          AND pos_2 = (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
        )
      UNION DISTINCT
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS INT64)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS INT64) IN (
          SELECT
            IF(pos = pos_2, col, NULL) AS col
          FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
          CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
          WHERE
            pos = pos_2
            OR (
              pos > (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
              AND pos_2 = (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
            )
        )
    )
  UNION ALL
  SELECT
    CAST(e.`PERSON_ID` AS INT64) AS person_id,
    CAST(e.`MEASUREMENT_DATE` AS DATE) AS start_date
  FROM `main`.`measurement` AS e
  WHERE
    CAST(e.`MEASUREMENT_CONCEPT_ID` AS INT64) IN (
      SELECT
        IF(pos = pos_2, col, NULL) AS col
      FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
      CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
      WHERE
        pos = pos_2
        OR (
          pos > (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
          AND pos_2 = (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
        )
      UNION DISTINCT
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS INT64)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS INT64) IN (
          SELECT
            IF(pos = pos_2, col, NULL) AS col
          FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
          CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
          WHERE
            pos = pos_2
            OR (
              pos > (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
              AND pos_2 = (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
            )
        )
    )
  UNION ALL
  SELECT
    CAST(e.`PERSON_ID` AS INT64) AS person_id,
    CAST(e.`OBSERVATION_DATE` AS DATE) AS start_date
  FROM `main`.`observation` AS e
  WHERE
    CAST(e.`OBSERVATION_CONCEPT_ID` AS INT64) IN (
      SELECT
        IF(pos = pos_2, col, NULL) AS col
      FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
      CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
      WHERE
        pos = pos_2
        OR (
          pos > (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
          AND pos_2 = (
            ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
          )
        )
      UNION DISTINCT
      SELECT
        CAST(`DESCENDANT_CONCEPT_ID` AS INT64)
      FROM `main`.`concept_ancestor`
      WHERE
        CAST(`ANCESTOR_CONCEPT_ID` AS INT64) IN (
          SELECT
            IF(pos = pos_2, col, NULL) AS col
          FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>))) - 1)) AS pos
          CROSS JOIN UNNEST(CAST(:concept_ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
          WHERE
            pos = pos_2
            OR (
              pos > (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
              AND pos_2 = (
                ARRAY_LENGTH(CAST(:concept_ids AS ARRAY<INT64>)) - 1
              )
            )
        )
    )
), op AS (
  SELECT
    CAST(o.`PERSON_ID` AS INT64) AS person_id,
    CAST(o.`OBSERVATION_PERIOD_START_DATE` AS DATE) AS op_start,
    CAST(o.`OBSERVATION_PERIOD_END_DATE` AS DATE) AS op_end
  FROM `main`.`observation_period` AS o
  WHERE
    CAST(o.`PERSON_ID` AS INT64) IN (
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
        AND occ.start_date < t.index_date + CAST(:tar_start AS INT64)
        AND occ.start_date >= t.index_date - CAST(:lookback AS INT64)
    ) AS prior_outcome,
    (
      SELECT
        MIN(occ.start_date)
      FROM occ
      WHERE
        occ.person_id = t.subject_id
        AND occ.start_date >= t.index_date + CAST(:tar_start AS INT64)
        AND occ.start_date <= t.index_date + CAST(:tar_end AS INT64)
    ) AS outcome_date
  FROM target AS t
)
SELECT
  subject_id,
  CAST(index_date AS DATETIME) AS index_date,
  CAST(CASE
    WHEN outcome_date IS NOT NULL AND outcome_date <= COALESCE(op_end, outcome_date)
    THEN 1
    ELSE 0
  END AS INT64) AS label,
  CAST(outcome_date AS DATETIME) AS outcome_date,
  CASE
    WHEN op_start IS NULL
    THEN 'index date outside every observation period'
    WHEN :remove_prior AND prior_outcome
    THEN 'outcome before the time at risk'
    WHEN index_date - op_start < :min_prior
    THEN 'too little observation before index'
    WHEN LEAST(op_end, index_date + CAST(:tar_end AS INT64)) - (
      index_date + CAST(:tar_start AS INT64)
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

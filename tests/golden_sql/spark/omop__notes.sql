WITH src AS (
  SELECT
    `row_id` AS row_key,
    `person_id` AS person_id,
    `person_raw` AS person_raw,
    `note_date` AS note_date,
    `note_date_raw` AS note_date_raw,
    `note_datetime` AS note_datetime,
    NULLIF(TRIM(CAST(`note_title` AS STRING)), '') AS title,
    CAST(`note_text` AS STRING) AS note_text,
    `visit_ref` AS visit_ref,
    `cast_errors` AS cast_error
  FROM `table` AS e
  WHERE
    `where`
)
SELECT
  s.person_id AS subject_id,
  CASE
    WHEN CAST(s.note_datetime AS DATE) = s.note_date
    THEN CAST(s.note_datetime AS TIMESTAMP_NTZ)
    ELSE CAST(s.note_date AS TIMESTAMP_NTZ)
  END AS time,
  CAST(s.row_key AS STRING) AS note_id,
  s.title,
  s.note_text AS text,
  CASE
    WHEN s.visit_ref IS NOT NULL
    AND EXISTS(
      SELECT
        1
      FROM `visit_table` AS v
      WHERE
        v.`v_visit_occurrence_id` = s.visit_ref AND v.`v_person_id` = s.person_id
    )
    THEN s.visit_ref
  END AS visit_id,
  'note' AS source,
  CAST(s.row_key AS STRING) AS row_key,
  CASE
    WHEN s.person_raw IS NULL
    THEN 'null person_id'
    WHEN s.cast_error IS NOT NULL
    THEN s.cast_error
    WHEN s.person_id IS NULL
    THEN 'person_id is not an integer'
    WHEN ps.person_raw IS NULL
    THEN 'person_id not in person table'
    WHEN ps.reason IS NOT NULL
    THEN 'person quarantined (' || ps.reason || ')'
    WHEN s.note_date_raw IS NULL
    THEN 'null note_date'
    WHEN s.note_date IS NULL
    THEN 'unparseable note_date'
    WHEN s.note_date < CAST(:valid_start AS DATE)
    OR s.note_date > CAST(:valid_end AS DATE)
    THEN `range_date_reason`
    WHEN s.note_date < ps.birth_floor
    THEN 'note_date before birth'
    WHEN s.note_text IS NULL OR TRIM(s.note_text) = ''
    THEN 'empty note_text'
  END AS reason
FROM src AS s
LEFT JOIN (
  `person_status`
) AS ps
  ON ps.person_id = s.person_id AND ps.dup_rank = 1

SELECT
  COUNT(*) AS entries,
  COUNT(DISTINCT subject_id) AS persons
FROM "cohort_table"
WHERE
  cohort_definition_id = :cohort_definition_id

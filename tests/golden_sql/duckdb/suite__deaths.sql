SELECT
  subject_id,
  CAST(death_date AS TIMESTAMP) AS time
FROM p
WHERE
  NOT death_date IS NULL

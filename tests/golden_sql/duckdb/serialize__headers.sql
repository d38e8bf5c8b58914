SELECT
  i.row_id,
  'Age at index: ' || CASE
    WHEN p.birth_date IS NULL
    THEN 'unknown'
    ELSE CAST(DATE_SUB('year', p.birth_date, CAST(i.index_date AS DATE)) AS TEXT) || ' years'
  END || '. Sex: ' || CASE p.sex WHEN 'F' THEN 'female' WHEN 'M' THEN 'male' ELSE 'unknown' END || '.' AS header
FROM idx AS i
LEFT JOIN persons AS p
  ON p.subject_id = i.subject_id
ORDER BY
  i.row_id

-- The header of each index row's text: age at index in whole years and sex (persons.parquet).
SELECT i.row_id,
       'Age at index: '
           || CASE WHEN p.birth_date IS NULL THEN 'unknown'
                   ELSE CAST(date_sub('year', p.birth_date, CAST(i.index_date AS DATE)) AS VARCHAR) || ' years' END
           || '. Sex: '
           || CASE p.sex WHEN 'F' THEN 'female' WHEN 'M' THEN 'male' ELSE 'unknown' END || '.' AS header
FROM idx i
LEFT JOIN persons p ON p.subject_id = i.subject_id
ORDER BY i.row_id

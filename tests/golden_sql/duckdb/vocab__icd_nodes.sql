WITH codes AS (
  SELECT
    'ICD10CM' AS vocab,
    UPPER(SPLIT_PART(TRIM(line), ' ', 1)) AS code
  FROM READ_CSV(
    :icd10,
    header = FALSE,
    columns = {'line': 'VARCHAR'},
    delim = '\t',
    quote = '',
    escape = ''
  )
  UNION ALL
  SELECT
    'ICD9CM',
    UPPER(SPLIT_PART(TRIM(line), ' ', 1))
  FROM READ_CSV(
    :icd9,
    header = FALSE,
    columns = {'line': 'VARCHAR'},
    delim = '\t',
    quote = '',
    escape = ''
  )
)
SELECT
  vocab,
  LEFT(code, n) AS node,
  CAST(MAX(CASE WHEN n = LENGTH(code) THEN 3 ELSE 2 END) AS INT) AS level
FROM codes, RANGE(3, 8) AS r(n)
WHERE
  code <> ''
  AND n <= LENGTH(code)
  AND NOT (
    vocab = 'ICD9CM' AND code LIKE 'E%' AND n < 4
  )
GROUP BY
  1,
  2

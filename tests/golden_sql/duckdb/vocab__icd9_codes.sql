SELECT DISTINCT
  UPPER(REPLACE(TRIM(v), '.', '')) AS icd9
FROM (
  SELECT
    code_value AS v
  FROM k
  WHERE
    UPPER(code_vocab) IN ('ICD9CM', 'ICD9', 'ICD-9-CM')
  UNION ALL
  SELECT
    source_value
  FROM k
  WHERE
    UPPER(source_vocab) IN ('ICD9CM', 'ICD9', 'ICD-9-CM')
) AS s
WHERE
  NOT v IS NULL

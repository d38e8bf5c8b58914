WITH parts AS (
  SELECT
    key_id,
    1 AS pri,
    UPPER(source_vocab) AS v,
    TRIM(source_value) AS val
  FROM k
  WHERE
    NOT source_code IS NULL
  UNION ALL
  SELECT
    key_id,
    2 AS pri,
    UPPER(code_vocab) AS v,
    TRIM(code_value) AS val
  FROM k
), schemed AS (
  SELECT
    key_id,
    pri,
    val,
    CASE
      WHEN v IN ('ICD10', 'ICD10CM', 'ICD10GM', 'ICD10CA', 'ICD-10', 'ICD-10-CM', 'ICD10WHO')
      THEN 'ICD10'
      WHEN v IN ('OPCS4', 'OPCS-4', 'OPCS')
      THEN 'OPCS4'
      WHEN v IN ('READ', 'READ2', 'READV2', 'READ_V2')
      THEN 'READ'
      WHEN v IN ('SNOMED', 'SNOMEDCT', 'SNOMED-CT', 'SCT')
      THEN 'SNOMED'
      WHEN v IN ('ICD9CM', 'ICD9', 'ICD-9-CM')
      THEN 'ICD9'
    END AS scheme
  FROM parts
), candidates AS (
  SELECT
    key_id,
    pri,
    scheme,
    UPPER(REPLACE(REPLACE(val, '.', ''), ' ', '')) AS norm
  FROM schemed
  WHERE
    scheme IN ('ICD10', 'OPCS4')
  UNION ALL
  SELECT
    key_id,
    pri,
    'READ',
    RPAD(LEFT(val, 5), 5, '.')
  FROM schemed
  WHERE
    scheme = 'READ'
  UNION ALL
  SELECT
    s.key_id,
    s.pri,
    'ICD10',
    UPPER(REPLACE(x.icd10_code, '.', ''))
  FROM schemed AS s
  JOIN x
    ON x.snomed_code = s.val
  WHERE
    s.scheme = 'SNOMED'
  UNION ALL
  SELECT
    s.key_id,
    s.pri,
    'ICD10',
    UPPER(gem.icd10)
  FROM schemed AS s
  JOIN gem
    ON gem.icd9 = UPPER(REPLACE(s.val, '.', ''))
  WHERE
    s.scheme = 'ICD9'
), hits AS (
  SELECT DISTINCT
    cd.key_id,
    cd.pri,
    'CALIBER/' || c.phenotype AS token
  FROM candidates AS cd
  JOIN cal AS c
    ON c.scheme = cd.scheme
    AND (
      (
        c.scheme = 'READ' AND cd.norm = c.norm
      )
      OR (
        c.scheme <> 'READ' AND STARTS_WITH(cd.norm, c.norm)
      )
    )
)
SELECT
  key_id,
  token
FROM hits
QUALIFY
  pri = MIN(pri) OVER (PARTITION BY key_id)

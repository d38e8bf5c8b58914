SELECT DISTINCT
  k.key_id,
  CAST(NULL AS TEXT) AS token
FROM k
WHERE
  k.domain IN (
    SELECT
      domain
    FROM d
  )
  OR k.code IN (
    SELECT
      code
    FROM c
  )
  OR k.source_code IN (
    SELECT
      code
    FROM c
  )
  OR (
    UPPER(k.code_vocab) IN ('SNOMED', 'SNOMEDCT', 'SCT')
    AND k.code_value IN (
      SELECT
        code
      FROM t
    )
  )
  OR (
    UPPER(k.source_vocab) IN ('SNOMED', 'SNOMEDCT', 'SCT')
    AND k.source_value IN (
      SELECT
        code
      FROM t
    )
  )

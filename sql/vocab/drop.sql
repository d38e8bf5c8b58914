-- Keys k dropped by a filter: their domain is in d, their code (or source code) is in c, or their SNOMED
-- code has a semantic tag in t(code, tag). A dropped key gets one row with a NULL token.
SELECT DISTINCT k.key_id, CAST(NULL AS VARCHAR) AS token
FROM k
WHERE k.domain IN (SELECT domain FROM d)
   OR k.code IN (SELECT code FROM c)
   OR k.source_code IN (SELECT code FROM c)
   OR (upper(k.code_vocab) IN ('SNOMED', 'SNOMEDCT', 'SCT') AND k.code_value IN (SELECT code FROM t))
   OR (upper(k.source_vocab) IN ('SNOMED', 'SNOMEDCT', 'SCT') AND k.source_value IN (SELECT code FROM t))

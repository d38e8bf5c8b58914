-- Keys k -> CALIBER tokens. Each key offers candidates from its source_code (pri 1) and its code (pri 2);
-- SNOMED candidates go through the crosswalk x(snomed_code, icd10_code), ICD-9-CM ones through the GEMs
-- gem(icd9, icd10). ICD-10 and OPCS-4 match when the CALIBER code cal.norm is a prefix of the candidate,
-- Read v2 on the 5-character code. Per key only the best-priority candidates that match give tokens.
WITH parts AS (
    SELECT key_id, 1 AS pri, upper(source_vocab) AS v, trim(source_value) AS val FROM k WHERE source_code IS NOT NULL
    UNION ALL
    SELECT key_id, 2 AS pri, upper(code_vocab) AS v, trim(code_value) AS val FROM k
),
schemed AS (
    SELECT key_id, pri, val,
        CASE
            WHEN v IN ('ICD10', 'ICD10CM', 'ICD10GM', 'ICD10CA', 'ICD-10', 'ICD-10-CM', 'ICD10WHO') THEN 'ICD10'
            WHEN v IN ('OPCS4', 'OPCS-4', 'OPCS') THEN 'OPCS4'
            WHEN v IN ('READ', 'READ2', 'READV2', 'READ_V2') THEN 'READ'
            WHEN v IN ('SNOMED', 'SNOMEDCT', 'SNOMED-CT', 'SCT') THEN 'SNOMED'
            WHEN v IN ('ICD9CM', 'ICD9', 'ICD-9-CM') THEN 'ICD9'
        END AS scheme
    FROM parts
),
candidates AS (
    SELECT key_id, pri, scheme, upper(replace(replace(val, '.', ''), ' ', '')) AS norm
    FROM schemed WHERE scheme IN ('ICD10', 'OPCS4')
    UNION ALL
    SELECT key_id, pri, 'READ', rpad(left(val, 5), 5, '.') FROM schemed WHERE scheme = 'READ'
    UNION ALL
    SELECT s.key_id, s.pri, 'ICD10', upper(replace(x.icd10_code, '.', ''))
    FROM schemed s JOIN x ON x.snomed_code = s.val WHERE s.scheme = 'SNOMED'
    UNION ALL
    SELECT s.key_id, s.pri, 'ICD10', upper(gem.icd10)
    FROM schemed s JOIN gem ON gem.icd9 = upper(replace(s.val, '.', '')) WHERE s.scheme = 'ICD9'
),
hits AS (
    SELECT DISTINCT cd.key_id, cd.pri, {token} AS token
    FROM candidates cd
    JOIN cal c ON c.scheme = cd.scheme
     AND ((c.scheme = 'READ' AND cd.norm = c.norm) OR (c.scheme <> 'READ' AND starts_with(cd.norm, c.norm)))
)
SELECT key_id, token
FROM hits
QUALIFY pri = min(pri) OVER (PARTITION BY key_id)

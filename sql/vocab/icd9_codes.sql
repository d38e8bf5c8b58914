-- Distinct undotted ICD-9-CM codes among the keys k (code or source_code), to look up in the GEMs.
SELECT DISTINCT upper(replace(trim(v), '.', '')) AS icd9
FROM (
    SELECT code_value AS v FROM k WHERE upper(code_vocab) IN ('ICD9CM', 'ICD9', 'ICD-9-CM')
    UNION ALL
    SELECT source_value FROM k WHERE upper(source_vocab) IN ('ICD9CM', 'ICD9', 'ICD-9-CM')
) s
WHERE v IS NOT NULL

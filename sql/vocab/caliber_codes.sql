-- CALIBER code lists (vocab_maps/caliber/*_long.csv, file paths bound as $icd10, $opcs4, $read2) as one
-- table (scheme, norm, phenotype, chapter). norm: ICD-10 / OPCS-4 upper case without dots (a prefix);
-- Read v2 the 5-character code, right-padded with '.' (upstream wrote some all-digit Read codes as numbers,
-- e.g. 7739300.0 for 7739300 and 1476 for 1476.00: the first 5 characters are right in both cases).
SELECT DISTINCT 'ICD10' AS scheme, upper(replace(trim(icd10_code), '.', '')) AS norm, phenotype, chapter
FROM read_csv($icd10, header = true, all_varchar = true)
UNION
SELECT DISTINCT 'OPCS4', upper(replace(trim(opcs4_code), '.', '')), phenotype, chapter
FROM read_csv($opcs4, header = true, all_varchar = true)
UNION
SELECT DISTINCT 'READ', rpad(left(trim(read_code), 5), 5, '.'), phenotype, chapter
FROM read_csv($read2, header = true, all_varchar = true)
ORDER BY 1, 2, 3

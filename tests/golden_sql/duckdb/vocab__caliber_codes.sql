SELECT DISTINCT
  'ICD10' AS scheme,
  UPPER(REPLACE(TRIM(icd10_code), '.', '')) AS norm,
  phenotype,
  chapter
FROM READ_CSV(:icd10, header = TRUE, all_varchar = TRUE)
UNION
SELECT DISTINCT
  'OPCS4',
  UPPER(REPLACE(TRIM(opcs4_code), '.', '')),
  phenotype,
  chapter
FROM READ_CSV(:opcs4, header = TRUE, all_varchar = TRUE)
UNION
SELECT DISTINCT
  'READ',
  RPAD(LEFT(TRIM(read_code), 5), 5, '.'),
  phenotype,
  chapter
FROM READ_CSV(:read2, header = TRUE, all_varchar = TRUE)
ORDER BY
  1,
  2,
  3

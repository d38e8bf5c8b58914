-- SNOMED -> ICD-10 pairs from an Athena vocabulary: ICD10 / ICD10CM concepts i that 'Maps to' a SNOMED
-- concept s (the reverse of the standard mapping); invalid relationships are skipped.
SELECT DISTINCT CAST({s_concept_code} AS VARCHAR) AS snomed_code, CAST({i_concept_code} AS VARCHAR) AS icd10_code
FROM {concept_relationship} r
JOIN {concept} i ON {i_concept_id} = {r_concept_id_1}
JOIN {concept} s ON {s_concept_id} = {r_concept_id_2}
WHERE {r_relationship_id} = 'Maps to'
  AND {i_vocabulary_id} IN ('ICD10', 'ICD10CM')
  AND {s_vocabulary_id} = 'SNOMED'
  AND {r_invalid_reason} IS NULL

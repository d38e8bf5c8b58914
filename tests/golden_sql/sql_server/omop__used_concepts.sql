SELECT
  c.[c_concept_id] AS concept_id,
  c.[c_vocabulary_id] AS vocabulary_id,
  c.[c_concept_code] AS concept_code,
  [c_concept_name] AS concept_name
FROM [concept_table] AS c
WHERE
  c.[c_concept_id] IN (
    SELECT DISTINCT
      id
    FROM (
      [ids]
    ) AS u
    WHERE
      id IS NOT NULL AND id <> 0
  )

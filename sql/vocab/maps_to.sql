-- Valid 'Maps to' links leaving the concepts :ids (non-standard -> standard).
SELECT DISTINCT CAST({concept_id_1} AS BIGINT) AS concept_id_1, CAST({concept_id_2} AS BIGINT) AS concept_id_2
FROM {concept_relationship}
WHERE {relationship_id} = 'Maps to' AND {invalid_reason} IS NULL AND {id_in}

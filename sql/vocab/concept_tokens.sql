-- Tokens for concepts p(key_id, {id}): VOCABULARY_ID/concept_code from the concept rows c; a concept the
-- CDM's concept table lacks keeps the key's own code k.code when it is the key's own concept (the adapter
-- already resolved it), else becomes OMOP/<concept_id>.
SELECT DISTINCT
    p.key_id,
    COALESCE(c.vocabulary_id || '/' || c.concept_code,
             CASE WHEN p.{id} = k.concept_id THEN k.code END,
             'OMOP/' || CAST(p.{id} AS VARCHAR)) AS token
FROM p
JOIN k ON k.key_id = p.key_id
LEFT JOIN c ON c.concept_id = p.{id}

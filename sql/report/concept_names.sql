-- Concept names for tokens shaped VOCABULARY_ID/concept_code (:vocabs, :codes: bound arrays, same order).
WITH wanted AS (
    SELECT unnest(CAST(:vocabs AS VARCHAR[])) AS vocabulary_id, unnest(CAST(:codes AS VARCHAR[])) AS concept_code
)
SELECT w.vocabulary_id || '/' || w.concept_code AS token, MIN(CAST(c.{c_name} AS VARCHAR)) AS name
FROM wanted w
JOIN {concept} c ON CAST(c.{c_vocabulary_id} AS VARCHAR) = w.vocabulary_id
                AND CAST(c.{c_concept_code} AS VARCHAR) = w.concept_code
GROUP BY 1

-- Concept name and domain for tokens shaped VOCABULARY_ID/concept_code (:vocabs, :codes: bound arrays, same order).
WITH wanted AS (
    SELECT unnest(CAST(:vocabs AS VARCHAR[])) AS vocabulary_id, unnest(CAST(:codes AS VARCHAR[])) AS concept_code
)
SELECT w.vocabulary_id || '/' || w.concept_code AS token, MIN(CAST({c_name} AS VARCHAR)) AS name,
       MIN(CAST({c_domain_id} AS VARCHAR)) AS domain
FROM wanted w
JOIN {concept} c ON CAST({c_vocabulary_id} AS VARCHAR) = w.vocabulary_id
                AND CAST({c_concept_code} AS VARCHAR) = w.concept_code
GROUP BY 1

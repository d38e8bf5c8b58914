-- Concept names for concept ids (:ids: a bound BIGINT array).
SELECT CAST({c_concept_id} AS BIGINT) AS concept_id, MIN(CAST({c_name} AS VARCHAR)) AS name
FROM {concept} c
WHERE CAST({c_concept_id} AS BIGINT) IN (SELECT unnest(CAST(:ids AS BIGINT[])))
GROUP BY 1

-- concept rows for a set of ids (:ids) or codes (:codes): the keys' own concepts, looked up in the CDM.
SELECT
    CAST({concept_id} AS BIGINT) AS concept_id,
    CAST({vocabulary_id} AS VARCHAR) AS vocabulary_id,
    CAST({concept_code} AS VARCHAR) AS concept_code,
    CAST({standard_concept} AS VARCHAR) AS standard_concept
FROM {concept}
WHERE {id_in} OR {code_in}

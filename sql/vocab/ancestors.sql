-- concept_ancestor rows whose descendant is one of :ids.
SELECT CAST({ancestor} AS BIGINT) AS ancestor_concept_id, CAST({descendant} AS BIGINT) AS descendant_concept_id,
       CAST({levels} AS BIGINT) AS min_levels_of_separation
FROM {concept_ancestor}
WHERE {id_in}

-- Keys k -> their standard concepts, from concept rows c and 'Maps to' links r. Evidence in order:
-- 1 concept_id, 2 source_concept_id, 3 code as (vocabulary_id, concept_code), 4 source_code likewise;
-- per key only the best evidence that resolves is kept. A standard concept ('S') stands for itself, a
-- classification ('C') or non-standard one follows 'Maps to'. An event's own concept_id that the CDM's
-- concept table lacks (a trimmed vocabulary) is trusted as standard: the event contract says it is.
WITH evidence AS (
    SELECT key_id, 1 AS pri, concept_id AS cid FROM k WHERE concept_id IS NOT NULL AND concept_id <> 0
    UNION ALL
    SELECT key_id, 2, source_concept_id FROM k WHERE source_concept_id IS NOT NULL AND source_concept_id <> 0
    UNION ALL
    SELECT k.key_id, 3, c.concept_id FROM k JOIN c
      ON upper(c.vocabulary_id) = upper(k.code_vocab) AND c.concept_code = k.code_value
    UNION ALL
    SELECT k.key_id, 4, c.concept_id FROM k JOIN c
      ON upper(c.vocabulary_id) = upper(k.source_vocab) AND c.concept_code = k.source_value
),
resolved AS (
    SELECT e.key_id, e.pri, e.cid AS concept_id
    FROM evidence e JOIN c ON c.concept_id = e.cid AND c.standard_concept = 'S'
    UNION
    SELECT e.key_id, e.pri, r.concept_id_2
    FROM evidence e JOIN r ON r.concept_id_1 = e.cid
    UNION
    SELECT e.key_id, e.pri, e.cid
    FROM evidence e WHERE e.pri = 1 AND NOT EXISTS (SELECT 1 FROM c WHERE c.concept_id = e.cid)
)
SELECT DISTINCT key_id, concept_id
FROM resolved
QUALIFY pri = min(pri) OVER (PARTITION BY key_id)

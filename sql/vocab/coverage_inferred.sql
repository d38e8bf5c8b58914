-- Codes that arrived without a vocabulary (i: one icd.infer_icd row per key) per domain, arrival vocabulary
-- (SOURCE_<DOMAIN>) and the vocabulary they were read as (NULL: not read, with the reason), with the fate of
-- their events from the per-key coverage pk: distinct codes (the source code, else the code), codes confirmed
-- by a code list, ambiguous codes (both shapes, decided by the tie rule), events and events mapped.
SELECT
    i.domain,
    i.from_vocab,
    i.vocab,
    CASE WHEN i.vocab IS NULL THEN i.evidence END AS reason,
    CAST(COUNT(DISTINCT COALESCE(pk.source_code, pk.code)) AS BIGINT) AS codes,
    CAST(COUNT(DISTINCT COALESCE(pk.source_code, pk.code))
         FILTER (WHERE i.vocab IS NOT NULL AND i.evidence LIKE '%in list') AS BIGINT) AS codes_in_list,
    CAST(COUNT(DISTINCT COALESCE(pk.source_code, pk.code)) FILTER (WHERE i.ambiguous) AS BIGINT) AS ambiguous,
    CAST(SUM(pk.n_events) AS BIGINT) AS events,
    CAST(COALESCE(SUM(pk.n_events) FILTER (WHERE pk.status = 'mapped'), 0) AS BIGINT) AS events_mapped
FROM i
JOIN pk ON pk.key_id = i.key_id
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3 NULLS LAST, 4

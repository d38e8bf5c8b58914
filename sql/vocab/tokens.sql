-- Events (view `events`) joined to their tokens: keys (distinct codes) x mapping (key_id -> token).
-- One event gives as many rows as its key has tokens; unmapped and dropped keys give none (they are counted
-- from the keys table, not here). visit_id is never null: events without a time and visit get 0.
-- key_id (in (domain, code, source_code, ...) order) and tok_rank (token order) let the caller sort on integers
-- only; it selects the columns it keeps and the order around this query.
WITH mapped AS (
    SELECT k.key_id, k.domain, k.code, k.source_code, k.concept_id, k.source_concept_id, m.token,
           dense_rank() OVER (ORDER BY m.token) AS tok_rank
    FROM keys k
    JOIN mapping m ON m.key_id = k.key_id
    WHERE m.token IS NOT NULL
)
SELECT
    e.subject_id,
    CAST(e.time AS TIMESTAMP) AS time,
    COALESCE(e.visit_id, 0) AS visit_id,
    e.domain,
    e.code,
    m.token,
    m.key_id,
    m.tok_rank
FROM events e
JOIN mapped m
  ON e.code = m.code
 AND e.domain = m.domain
 AND e.source_code IS NOT DISTINCT FROM m.source_code
 AND e.concept_id IS NOT DISTINCT FROM m.concept_id
 AND e.source_concept_id IS NOT DISTINCT FROM m.source_concept_id

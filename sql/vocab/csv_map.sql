-- A user mapping table m(source_vocabulary, source_code, token, priority) applied to the keys k:
-- a key matches on its code or its source_code; per key only the rows of the smallest priority are kept.
WITH hits AS (
    SELECT k.key_id, m.token, m.priority
    FROM k JOIN m ON upper(k.code_vocab) = m.source_vocabulary AND k.code_value = m.source_code
    UNION
    SELECT k.key_id, m.token, m.priority
    FROM k JOIN m ON upper(k.source_vocab) = m.source_vocabulary AND k.source_value = m.source_code
)
SELECT key_id, token
FROM hits
QUALIFY priority = min(priority) OVER (PARTITION BY key_id)

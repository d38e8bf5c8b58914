WITH hits AS (
  SELECT
    k.key_id,
    m.token,
    m.priority
  FROM k
  JOIN m
    ON UPPER(k.code_vocab) = m.source_vocabulary AND k.code_value = m.source_code
  UNION
  SELECT
    k.key_id,
    m.token,
    m.priority
  FROM k
  JOIN m
    ON UPPER(k.source_vocab) = m.source_vocabulary AND k.source_value = m.source_code
)
SELECT
  key_id,
  token
FROM hits
QUALIFY
  priority = MIN(priority) OVER (PARTITION BY key_id)

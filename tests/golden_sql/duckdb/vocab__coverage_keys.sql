SELECT
  k.key_id,
  k.domain,
  k.code,
  k.source_code,
  k.code_vocab,
  k.n_events,
  k.n_persons,
  CASE
    WHEN COUNT(m.token) > 0
    THEN 'mapped'
    WHEN COUNT(m.key_id) > 0
    THEN 'dropped'
    ELSE 'unmapped'
  END AS status,
  COUNT(DISTINCT m.token) AS n_tokens
FROM k
LEFT JOIN m
  ON m.key_id = k.key_id
GROUP BY
  k.key_id,
  k.domain,
  k.code,
  k.source_code,
  k.code_vocab,
  k.n_events,
  k.n_persons

SELECT
  k.key_id,
  k.domain,
  CASE WHEN NOT c.vocab IS NULL THEN c.vocab || '/' || c.value ELSE k.code END AS code,
  CASE WHEN NOT s.vocab IS NULL THEN s.vocab || '/' || s.value ELSE k.source_code END AS source_code,
  k.concept_id,
  k.source_concept_id,
  COALESCE(c.vocab, k.code_vocab) AS code_vocab,
  COALESCE(c.value, k.code_value) AS code_value,
  COALESCE(s.vocab, k.source_vocab) AS source_vocab,
  COALESCE(s.value, k.source_value) AS source_value,
  k.n_events,
  k.n_persons
FROM k
LEFT JOIN i AS c
  ON c.key_id = k.key_id AND c.side = 'code' AND NOT c.vocab IS NULL
LEFT JOIN i AS s
  ON s.key_id = k.key_id AND s.side = 'source' AND NOT s.vocab IS NULL
ORDER BY
  k.key_id

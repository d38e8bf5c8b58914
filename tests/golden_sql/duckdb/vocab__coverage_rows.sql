SELECT
  pk.domain,
  pk.code_vocab AS vocabulary,
  CAST(SUM(pk.n_events) AS BIGINT) AS events,
  CAST(COALESCE(SUM(pk.n_events) FILTER(WHERE
    pk.status = 'mapped'), 0) AS BIGINT) AS events_mapped,
  CAST(COALESCE(SUM(pk.n_events) FILTER(WHERE
    pk.status = 'dropped'), 0) AS BIGINT) AS events_dropped,
  CAST(COALESCE(SUM(pk.n_events) FILTER(WHERE
    pk.status = 'unmapped'), 0) AS BIGINT) AS events_unmapped,
  CAST(COUNT(DISTINCT pk.code) AS BIGINT) AS codes,
  CAST(COUNT(DISTINCT pk.code) FILTER(WHERE
    pk.status = 'mapped') AS BIGINT) AS codes_mapped,
  CAST(COUNT(DISTINCT pk.code) FILTER(WHERE
    pk.status = 'dropped') AS BIGINT) AS codes_dropped,
  CAST(SUM(pk.n_events * pk.n_tokens) AS BIGINT) AS tokens,
  CAST((
    SELECT
      COUNT(DISTINCT m.token)
    FROM m
    JOIN pk AS p2
      ON p2.key_id = m.key_id
    WHERE
      p2.domain = pk.domain AND p2.code_vocab = pk.code_vocab
  ) AS BIGINT) AS distinct_tokens
FROM pk
GROUP BY
  pk.domain,
  pk.code_vocab
ORDER BY
  pk.domain,
  pk.code_vocab

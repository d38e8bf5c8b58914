SELECT
  i.domain,
  i.from_vocab,
  i.vocab,
  CASE WHEN i.vocab IS NULL THEN i.evidence END AS reason,
  CAST(COUNT(DISTINCT COALESCE(pk.source_code, pk.code)) AS BIGINT) AS codes,
  CAST(COUNT(DISTINCT COALESCE(pk.source_code, pk.code)) FILTER(WHERE
    NOT i.vocab IS NULL AND i.evidence LIKE '%in list') AS BIGINT) AS codes_in_list,
  CAST(COUNT(DISTINCT COALESCE(pk.source_code, pk.code)) FILTER(WHERE
    i.ambiguous) AS BIGINT) AS ambiguous,
  CAST(SUM(pk.n_events) AS BIGINT) AS events,
  CAST(COALESCE(SUM(pk.n_events) FILTER(WHERE
    pk.status = 'mapped'), 0) AS BIGINT) AS events_mapped
FROM i
JOIN pk
  ON pk.key_id = i.key_id
GROUP BY
  1,
  2,
  3,
  4
ORDER BY
  1,
  2,
  3,
  4

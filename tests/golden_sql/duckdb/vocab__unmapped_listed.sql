SELECT
  domain,
  code,
  source_code,
  n_events AS events,
  n_persons AS persons,
  exact AS persons_exact
FROM pk
WHERE
  status = 'unmapped'
  AND n_persons >= :floor
  AND (
    exact OR n_persons >= 2 * :min_count
  )
ORDER BY
  events DESC,
  domain,
  code,
  source_code
LIMIT :top

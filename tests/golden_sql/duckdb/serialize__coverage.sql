SELECT
  COUNT(*) AS events,
  COUNT(d.code) AS events_described,
  COUNT(DISTINCT s.code) AS codes,
  COUNT(DISTINCT d.code) AS codes_described
FROM seen AS s
LEFT JOIN descriptions AS d
  ON d.code = s.code

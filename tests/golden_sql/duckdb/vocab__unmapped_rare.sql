SELECT
  COUNT(*) AS n
FROM pk
WHERE
  status = 'unmapped' AND (
    n_events < :min_count OR n_persons < :min_count
  )

WITH costed AS (
  SELECT
    l.*,
    h.header,
    LENGTH(l.line) + 3 + CASE
      WHEN l.rank = MIN(l.rank) OVER (PARTITION BY l.row_id, l.section)
      THEN LENGTH(l.heading) + 1
      ELSE 0
    END AS cost
  FROM lines AS l
  JOIN headers AS h
    ON h.row_id = l.row_id
), kept AS (
  SELECT
    *
  FROM (
    SELECT
      *,
      LENGTH(header) + SUM(cost) OVER (PARTITION BY row_id ORDER BY rank ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS used
    FROM costed
  )
  WHERE
    CAST(:budget AS BIGINT) IS NULL OR used <= CAST(:budget AS BIGINT)
), section_text AS (
  SELECT
    row_id,
    section,
    CHR(10) || ANY_VALUE(heading) || LISTAGG(CHR(10) || '- ' || line, ''
    ORDER BY
      line_order) AS body,
    COUNT(*) AS n
  FROM kept
  GROUP BY
    row_id,
    section
), bodies AS (
  SELECT
    row_id,
    LISTAGG(body, ''
    ORDER BY
      section) AS body,
    SUM(n) AS n
  FROM section_text
  GROUP BY
    row_id
), totals AS (
  SELECT
    row_id,
    COUNT(*) AS n_all
  FROM lines
  GROUP BY
    row_id
)
SELECT
  h.row_id,
  h.header || COALESCE(b.body, '') AS text,
  CAST(COALESCE(b.n, 0) AS INT) AS n_lines,
  COALESCE(b.n, 0) < COALESCE(t.n_all, 0) AS truncated
FROM headers AS h
LEFT JOIN bodies AS b
  ON b.row_id = h.row_id
LEFT JOIN totals AS t
  ON t.row_id = h.row_id
ORDER BY
  h.row_id

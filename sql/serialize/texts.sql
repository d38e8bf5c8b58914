-- One text per index row: the header, then the sections in order, each its heading and its kept lines.
-- A line costs its length + 3 (newline, "- "), plus its section's heading + 1 when it is the section's newest line, so
-- the kept lines (the newest, up to $budget characters with the header; all when $budget is NULL) make a text
-- of at most $budget characters whenever the header alone fits.
WITH costed AS (
    SELECT l.*, h.header,
           length(l.line) + 3 + CASE WHEN l.rank = min(l.rank) OVER (PARTITION BY l.row_id, l.section)
                                     THEN length(l.heading) + 1 ELSE 0 END AS cost
    FROM lines l JOIN headers h ON h.row_id = l.row_id
), kept AS (
    SELECT * FROM (
        SELECT *, length(header) + sum(cost) OVER (PARTITION BY row_id ORDER BY rank
                                                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS used
        FROM costed
    ) WHERE CAST($budget AS BIGINT) IS NULL OR used <= CAST($budget AS BIGINT)
), section_text AS (
    SELECT row_id, section, chr(10) || any_value(heading) || string_agg(chr(10) || '- ' || line, '' ORDER BY line_order) AS body,
           count(*) AS n
    FROM kept
    GROUP BY row_id, section
), bodies AS (
    SELECT row_id, string_agg(body, '' ORDER BY section) AS body, sum(n) AS n
    FROM section_text
    GROUP BY row_id
), totals AS (
    SELECT row_id, count(*) AS n_all FROM lines GROUP BY row_id
)
SELECT h.row_id, h.header || coalesce(b.body, '') AS text, CAST(coalesce(b.n, 0) AS INTEGER) AS n_lines,
       coalesce(b.n, 0) < coalesce(t.n_all, 0) AS truncated
FROM headers h
LEFT JOIN bodies b ON b.row_id = h.row_id
LEFT JOIN totals t ON t.row_id = h.row_id
ORDER BY h.row_id

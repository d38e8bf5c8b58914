-- History lines grouped by domain: one line per (index row, domain, code), repeats collapsed into a count and
-- the most recent date. section = the domain's place in the text; rank = recency over all the row's lines
-- (1 = most recent; truncation keeps the lowest ranks); line_order = place inside its section (= recency).
WITH grouped AS (
    SELECT row_id, domain, code, count(*) AS n, min(days) AS days,
           first(numeric_value ORDER BY time DESC, numeric_value DESC) FILTER (WHERE numeric_value IS NOT NULL)
               AS value,
           first(unit ORDER BY time DESC, numeric_value DESC) FILTER (WHERE numeric_value IS NOT NULL) AS unit,
           first(stay ORDER BY time DESC, stay DESC NULLS LAST) AS stay
    FROM seen
    GROUP BY row_id, domain, code
), labelled AS (
    SELECT g.*, s.section_order, s.title, coalesce(d.description, g.code) AS label
    FROM grouped g
    JOIN sections s ON s.domain = g.domain
    LEFT JOIN descriptions d ON d.code = g.code
)
SELECT row_id, section_order AS section, title AS heading, days,
       row_number() OVER (PARTITION BY row_id ORDER BY days, section_order, label, code) AS rank,
       row_number() OVER (PARTITION BY row_id, section_order ORDER BY days, label, code) AS line_order,
       label || ': '
           || CASE WHEN n > 1 THEN CAST(n AS VARCHAR) || ' times, last ' ELSE '' END
           || before_words(days)
           || CASE WHEN value IS NULL THEN ''
                   WHEN n > 1 THEN ', last value ' || value_words(value) || unit_words(unit)
                   ELSE ', value ' || value_words(value) || unit_words(unit) END
           || CASE WHEN domain = 'visit' THEN stay_words(stay) ELSE '' END AS line
FROM labelled

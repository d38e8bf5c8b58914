-- History lines grouped by visit: one section per (index row, visit), most recent visit first, headed by when
-- it began; inside it one line per (domain, code) with a count when repeated. The visit's own record (type,
-- length of stay) is its first line. Events without a visit_id form one section per day.
WITH visits AS (
    SELECT row_id, visit_key, max(days) AS days
    FROM seen
    GROUP BY row_id, visit_key
), numbered AS (
    SELECT row_id, visit_key, days,
           row_number() OVER (PARTITION BY row_id ORDER BY days, visit_key) AS section
    FROM visits
), grouped AS (
    SELECT row_id, visit_key, domain, code, count(*) AS n,
           first(numeric_value ORDER BY time DESC, numeric_value DESC) FILTER (WHERE numeric_value IS NOT NULL)
               AS value,
           first(unit ORDER BY time DESC, numeric_value DESC) FILTER (WHERE numeric_value IS NOT NULL) AS unit,
           first(stay ORDER BY time DESC, stay DESC NULLS LAST) AS stay
    FROM seen
    GROUP BY row_id, visit_key, domain, code
), labelled AS (
    SELECT g.*, v.section, v.days AS visit_days, s.label AS domain_label,
           CASE WHEN g.domain = 'visit' THEN 0 ELSE s.section_order END AS domain_order,
           coalesce(d.description, g.code) AS label
    FROM grouped g
    JOIN numbered v ON v.row_id = g.row_id AND v.visit_key = g.visit_key
    JOIN sections s ON s.domain = g.domain
    LEFT JOIN descriptions d ON d.code = g.code
), ordered AS (
    SELECT *, row_number() OVER (PARTITION BY row_id, section ORDER BY domain_order, label, code) AS line_order
    FROM labelled
)
SELECT row_id, section, upper(before_words(visit_days)[1]) || before_words(visit_days)[2:] || ':' AS heading,
       visit_days AS days,
       row_number() OVER (PARTITION BY row_id ORDER BY section, line_order) AS rank,
       line_order,
       domain_label || ': ' || label
           || CASE WHEN n > 1 THEN ' (' || CAST(n AS VARCHAR) || ' times)' ELSE '' END
           || CASE WHEN value IS NULL THEN ''
                   WHEN n > 1 THEN ', last value ' || value_words(value) || unit_words(unit)
                   ELSE ', value ' || value_words(value) || unit_words(unit) END
           || CASE WHEN domain = 'visit' THEN stay_words(stay) ELSE '' END AS line
FROM ordered

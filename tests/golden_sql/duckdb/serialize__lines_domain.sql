WITH grouped AS (
  SELECT
    row_id,
    domain,
    code,
    COUNT(*) AS n,
    MIN(days) AS days,
    FIRST(numeric_value ORDER BY time DESC, numeric_value DESC) FILTER(WHERE
      NOT numeric_value IS NULL) AS value,
    FIRST(unit ORDER BY time DESC, numeric_value DESC) FILTER(WHERE
      NOT numeric_value IS NULL) AS unit,
    FIRST(stay ORDER BY time DESC, stay DESC) AS stay
  FROM seen
  GROUP BY
    row_id,
    domain,
    code
), labelled AS (
  SELECT
    g.*,
    s.section_order,
    s.title,
    COALESCE(d.description, g.code) AS label
  FROM grouped AS g
  JOIN sections AS s
    ON s.domain = g.domain
  LEFT JOIN descriptions AS d
    ON d.code = g.code
)
SELECT
  row_id,
  section_order AS section,
  title AS heading,
  days,
  ROW_NUMBER() OVER (PARTITION BY row_id ORDER BY days, section_order, label, code) AS rank,
  ROW_NUMBER() OVER (PARTITION BY row_id, section_order ORDER BY days, label, code) AS line_order,
  label || ': ' || CASE WHEN n > 1 THEN CAST(n AS TEXT) || ' times, last ' ELSE '' END || BEFORE_WORDS(days) || CASE
    WHEN value IS NULL
    THEN ''
    WHEN n > 1
    THEN ', last value ' || VALUE_WORDS(value) || UNIT_WORDS(unit)
    ELSE ', value ' || VALUE_WORDS(value) || UNIT_WORDS(unit)
  END || CASE WHEN domain = 'visit' THEN STAY_WORDS(stay) ELSE '' END AS line
FROM labelled

WITH visits AS (
  SELECT
    row_id,
    visit_key,
    MAX(days) AS days
  FROM seen
  GROUP BY
    row_id,
    visit_key
), numbered AS (
  SELECT
    row_id,
    visit_key,
    days,
    ROW_NUMBER() OVER (PARTITION BY row_id ORDER BY days, visit_key) AS section
  FROM visits
), grouped AS (
  SELECT
    row_id,
    visit_key,
    domain,
    code,
    COUNT(*) AS n,
    FIRST(numeric_value ORDER BY time DESC, numeric_value DESC) FILTER(WHERE
      NOT numeric_value IS NULL) AS value,
    FIRST(unit ORDER BY time DESC, numeric_value DESC) FILTER(WHERE
      NOT numeric_value IS NULL) AS unit,
    FIRST(stay ORDER BY time DESC, stay DESC) AS stay
  FROM seen
  GROUP BY
    row_id,
    visit_key,
    domain,
    code
), labelled AS (
  SELECT
    g.*,
    v.section,
    v.days AS visit_days,
    s.label AS domain_label,
    CASE WHEN g.domain = 'visit' THEN 0 ELSE s.section_order END AS domain_order,
    COALESCE(d.description, g.code) AS label
  FROM grouped AS g
  JOIN numbered AS v
    ON v.row_id = g.row_id AND v.visit_key = g.visit_key
  JOIN sections AS s
    ON s.domain = g.domain
  LEFT JOIN descriptions AS d
    ON d.code = g.code
), ordered AS (
  SELECT
    *,
    ROW_NUMBER() OVER (PARTITION BY row_id, section ORDER BY domain_order, label, code) AS line_order
  FROM labelled
)
SELECT
  row_id,
  section,
  UPPER(BEFORE_WORDS(visit_days)[1]) || BEFORE_WORDS(visit_days)[2:] || ':' AS heading,
  visit_days AS days,
  ROW_NUMBER() OVER (PARTITION BY row_id ORDER BY section, line_order) AS rank,
  line_order,
  domain_label || ': ' || label || CASE WHEN n > 1 THEN ' (' || CAST(n AS TEXT) || ' times)' ELSE '' END || CASE
    WHEN value IS NULL
    THEN ''
    WHEN n > 1
    THEN ', last value ' || VALUE_WORDS(value) || UNIT_WORDS(unit)
    ELSE ', value ' || VALUE_WORDS(value) || UNIT_WORDS(unit)
  END || CASE WHEN domain = 'visit' THEN STAY_WORDS(stay) ELSE '' END AS line
FROM ordered

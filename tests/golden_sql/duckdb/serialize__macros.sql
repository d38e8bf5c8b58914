CREATE OR REPLACE TEMPORARY MACRO before_words(
    d
) AS
CASE
  WHEN d <= 0
  THEN 'same day'
  WHEN d = 1
  THEN '1 day before'
  WHEN d < 14
  THEN CAST(d AS TEXT) || ' days before'
  WHEN d < 60
  THEN CAST(d // 7 AS TEXT) || ' weeks before'
  WHEN d < 365
  THEN CAST(GREATEST(2, d * 12 // 365) AS TEXT) || ' months before'
  WHEN d < 730
  THEN '1 year before'
  ELSE CAST(d // 365 AS TEXT) || ' years before'
END;
CREATE OR REPLACE TEMPORARY MACRO stay_words(
    d
) AS
CASE
  WHEN d IS NULL
  THEN ''
  WHEN d <= 0
  THEN ', length of stay under 1 day'
  WHEN d = 1
  THEN ', length of stay 1 day'
  ELSE ', length of stay ' || CAST(d AS TEXT) || ' days'
END;
CREATE OR REPLACE TEMPORARY MACRO value_words(
    v
) AS
CASE WHEN v IS NULL THEN '' ELSE FORMAT('{:.6g}', CAST(v AS DOUBLE)) END;
CREATE OR REPLACE TEMPORARY MACRO unit_words(
    u
) AS
CASE WHEN u IS NULL THEN '' ELSE ' ' || u END;
CREATE OR REPLACE TEMPORARY TABLE sections AS
SELECT
  *
FROM (VALUES
  ('condition', 1, 'Conditions:', 'condition'),
  ('drug', 2, 'Drugs:', 'drug'),
  ('procedure', 3, 'Procedures:', 'procedure'),
  ('measurement', 4, 'Measurements:', 'measurement'),
  ('observation', 5, 'Observations:', 'observation'),
  ('device', 6, 'Devices:', 'device'),
  ('immunization', 7, 'Immunizations:', 'immunization'),
  ('allergy', 8, 'Allergies:', 'allergy'),
  ('death', 9, 'Causes of death:', 'cause of death'),
  ('visit', 10, 'Visits:', 'visit')) AS s(domain, section_order, title, label);
CREATE OR REPLACE TEMPORARY TABLE seen AS
SELECT
  i.row_id,
  e.domain,
  e.code,
  e.time,
  e.numeric_value,
  NULLIF(TRIM(e.unit), '') AS unit,
  COALESCE(CAST(e.visit_id AS TEXT), 'day ' || CAST(CAST(e.time AS DATE) AS TEXT)) AS visit_key,
  DATE_DIFF('DAY', CAST(e.time AS DATE), CAST(i.index_date AS DATE)) AS days,
  DATE_DIFF('DAY', CAST(e.time AS DATE), CAST(e.end_time AS DATE)) AS stay
FROM events AS e
JOIN idx AS i
  ON e.subject_id = i.subject_id AND e.time < i.cut

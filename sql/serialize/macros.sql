-- Macros the serialiser's templates share (DuckDB, run on the serialiser's own in-memory connection).
-- before_words(d): a whole number of days before the index date in words, the same words for the same days.
CREATE OR REPLACE TEMP MACRO before_words(d) AS CASE
    WHEN d <= 0 THEN 'same day'
    WHEN d = 1 THEN '1 day before'
    WHEN d < 14 THEN CAST(d AS VARCHAR) || ' days before'
    WHEN d < 60 THEN CAST(d // 7 AS VARCHAR) || ' weeks before'
    WHEN d < 365 THEN CAST(greatest(2, d * 12 // 365) AS VARCHAR) || ' months before'
    WHEN d < 730 THEN '1 year before'
    ELSE CAST(d // 365 AS VARCHAR) || ' years before'
END;
-- stay_words(d): a visit's length of stay in whole days (end date minus start date).
CREATE OR REPLACE TEMP MACRO stay_words(d) AS CASE
    WHEN d IS NULL THEN ''
    WHEN d <= 0 THEN ', length of stay under 1 day'
    WHEN d = 1 THEN ', length of stay 1 day'
    ELSE ', length of stay ' || CAST(d AS VARCHAR) || ' days'
END;
-- value_words(v): a measurement's value, six significant digits (float32 noise never shows).
CREATE OR REPLACE TEMP MACRO value_words(v) AS CASE
    WHEN v IS NULL THEN '' ELSE format('{:.6g}', CAST(v AS DOUBLE))
END;
-- unit_words(u): the unit after a value (" mg/dL"), nothing when the source gave none.
CREATE OR REPLACE TEMP MACRO unit_words(u) AS CASE WHEN u IS NULL THEN '' ELSE ' ' || u END;
-- Domain sections: order in the text, heading, and the label a line carries when lines are grouped by visit.
CREATE OR REPLACE TEMP TABLE sections AS SELECT * FROM (VALUES
    ('condition', 1, 'Conditions:', 'condition'),
    ('drug', 2, 'Drugs:', 'drug'),
    ('procedure', 3, 'Procedures:', 'procedure'),
    ('measurement', 4, 'Measurements:', 'measurement'),
    ('observation', 5, 'Observations:', 'observation'),
    ('device', 6, 'Devices:', 'device'),
    ('immunization', 7, 'Immunizations:', 'immunization'),
    ('allergy', 8, 'Allergies:', 'allergy'),
    ('death', 9, 'Causes of death:', 'cause of death'),
    ('visit', 10, 'Visits:', 'visit')
) AS s(domain, section_order, title, label);
-- seen: every event an index row may see (strictly before its cut: the index date, or the end of that day when
-- inclusive), with the whole days from the event's date to the index date.
CREATE OR REPLACE TEMP TABLE seen AS
SELECT i.row_id, e.domain, e.code, e.time, e.numeric_value, nullif(trim(e.unit), '') AS unit,
       coalesce(CAST(e.visit_id AS VARCHAR), 'day ' || CAST(CAST(e.time AS DATE) AS VARCHAR)) AS visit_key,
       date_diff('day', CAST(e.time AS DATE), CAST(i.index_date AS DATE)) AS days,
       date_diff('day', CAST(e.time AS DATE), CAST(e.end_time AS DATE)) AS stay
FROM events e
JOIN idx i ON e.subject_id = i.subject_id AND e.time < i.cut;

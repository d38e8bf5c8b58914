CREATE OR REPLACE TEMPORARY TABLE notes_seen AS
SELECT
  i.row_id,
  n.note_id,
  n.time,
  DATE_DIFF('DAY', CAST(n.time AS DATE), CAST(i.index_date AS DATE)) AS days,
  NULLIF(TRIM(REGEXP_REPLACE(COALESCE(n.title, ''), '\s+', ' ', 'g')), '') AS title,
  TRIM(REGEXP_REPLACE(n.text, '\s+', ' ', 'g')) AS text
FROM notes AS n
JOIN idx AS i
  ON n.subject_id = i.subject_id AND n.time < i.cut
WHERE
  TRIM(n.text) <> ''

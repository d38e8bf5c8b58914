-- notes_seen: every clinical note an index row may see (strictly before its cut, as the events), with the whole
-- days from the note's date to the index date; title and text with their whitespace collapsed to single spaces.
CREATE OR REPLACE TEMP TABLE notes_seen AS
SELECT i.row_id, n.note_id, n.time,
       date_diff('day', CAST(n.time AS DATE), CAST(i.index_date AS DATE)) AS days,
       nullif(trim(regexp_replace(coalesce(n.title, ''), '\s+', ' ', 'g')), '') AS title,
       trim(regexp_replace(n.text, '\s+', ' ', 'g')) AS text
FROM notes n
JOIN idx i ON n.subject_id = i.subject_id AND n.time < i.cut
WHERE trim(n.text) <> '';

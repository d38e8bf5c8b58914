-- The notes as history lines of their own section, after every coded section: one line per note, most recent
-- first, "<title>, <when>: <text>" (title "Note" when the source gives none). Ranked with the coded lines by
-- recency afterwards (serialize.py), so truncation drops the oldest line, note or code.
SELECT row_id, 1000000 AS section, 'Notes:' AS heading, days,
       row_number() OVER (PARTITION BY row_id ORDER BY days, time DESC, note_id, text) AS line_order,
       coalesce(title, 'Note') || ', ' || before_words(days) || ': ' || text AS line
FROM notes_seen

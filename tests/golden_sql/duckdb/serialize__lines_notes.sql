SELECT
  row_id,
  1000000 AS section,
  'Notes:' AS heading,
  days,
  ROW_NUMBER() OVER (PARTITION BY row_id ORDER BY days, time DESC, note_id, text) AS line_order,
  COALESCE(title, 'Note') || ', ' || BEFORE_WORDS(days) || ': ' || text AS line
FROM notes_seen

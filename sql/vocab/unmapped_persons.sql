-- The unmapped keys of pk whose person count must be exact: those with at least $min_count events (fewer
-- events are fewer persons) whose estimate is below twice $min_count (DuckDB's HyperLogLog estimate does
-- not exceed the true count at such sizes; 2x is the margin), and with $all_top (--show-rare-codes) the
-- $top most frequent, whatever their count, so that the list shows their exact counts.
SELECT key_id FROM pk
WHERE status = 'unmapped' AND n_events >= $min_count AND n_persons < 2 * $min_count
UNION
SELECT key_id FROM (
    SELECT key_id FROM pk WHERE status = 'unmapped' AND $all_top
    ORDER BY n_events DESC, domain, code, source_code LIMIT $top
) t

-- How many unmapped codes a shareable coverage report leaves out: seen in fewer than $min_count persons or events.
SELECT COUNT(*) AS n FROM pk WHERE status = 'unmapped' AND (n_events < $min_count OR n_persons < $min_count)

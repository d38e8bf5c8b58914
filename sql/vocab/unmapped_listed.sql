-- The unmapped codes a shareable coverage report lists: seen in at least $floor persons (min_count, or 0 when
-- rare codes are asked for), the person count exact or estimated well above min_count; the top $top by events.
SELECT domain, code, source_code, n_events AS events, n_persons AS persons, exact AS persons_exact
FROM pk
WHERE status = 'unmapped' AND n_persons >= $floor AND (exact OR n_persons >= 2 * $min_count)
ORDER BY events DESC, domain, code, source_code
LIMIT $top

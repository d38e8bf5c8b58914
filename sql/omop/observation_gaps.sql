-- The gaps between a person's observation periods: (person_id, gap_start, gap_end), the open interval no period
-- covers. Overlapping periods merge through the running maximum of the ends before each start. A small table
-- (persons with several periods only), joined to the events to tell those outside every period.
SELECT w.person_id, w.covered_until AS gap_start, w.start_date AS gap_end
FROM (
    SELECT
        p.person_id,
        p.start_date,
        MAX(p.end_date) OVER (PARTITION BY p.person_id ORDER BY p.start_date, p.end_date
                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered_until
    FROM (
        SELECT {o_person_id} AS person_id, {o_start} AS start_date, {o_end} AS end_date
        FROM {op_table} o
    ) p
    WHERE p.start_date IS NOT NULL AND p.end_date IS NOT NULL
) w
WHERE w.start_date > w.covered_until

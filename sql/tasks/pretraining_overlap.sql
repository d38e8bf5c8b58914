-- Leakage check: how many task entries (ix: subject_id, index_date) have pretraining events (ev: subject_id,
-- time) on or after their index date, and how many inside their outcome window [index + $tar_start days,
-- index + $tar_end days]. Counts only; no person leaves the database.
SELECT count(*)                                   AS entries_with_later_events,
       count(*) FILTER (WHERE in_window)          AS entries_with_window_events,
       (SELECT count(*) FROM ix)                  AS entries
FROM (
    SELECT ix.subject_id, ix.index_date,
           bool_or(ev.time >= ix.index_date + to_days(CAST($tar_start AS INTEGER))
                   AND ev.time < ix.index_date + to_days(CAST($tar_end AS INTEGER) + 1)) AS in_window
    FROM ix
    JOIN ev ON ev.subject_id = ix.subject_id AND ev.time >= ix.index_date
    GROUP BY ix.subject_id, ix.index_date
) AS later

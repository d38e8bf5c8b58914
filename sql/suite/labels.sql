-- Labels of one task at the suite's index rows (ix: subject_id, index_date). An outcome (o: subject_id, time) in
-- [index + $start days, index + $end_days days] and inside the person's follow-up (sp.followup_end: data dated
-- after the record ends, e.g. a death registered years later, is not an observed outcome) makes the label 1. A row
-- without one is kept only when the person is followed to the window's end; with $new_onset, a row whose person
-- had the outcome before the index date is excluded. `excluded` names the reason (NULL: kept).
WITH hits AS (
    SELECT ix.subject_id, ix.index_date,
           bool_or(o.time >= ix.index_date + to_days(CAST($start_days AS INTEGER))
                   AND o.time < ix.index_date + to_days(CAST($end_days AS INTEGER) + 1)) AS hit,
           bool_or(o.time < ix.index_date) AS prior
    FROM ix JOIN o ON o.subject_id = ix.subject_id
    JOIN sp ON sp.subject_id = ix.subject_id AND o.time < sp.followup_end + INTERVAL 1 DAY
    GROUP BY ix.subject_id, ix.index_date
)
SELECT ix.subject_id, ix.index_date,
       CASE WHEN $new_onset AND coalesce(h.prior, FALSE) THEN 'outcome before the index date'
            WHEN coalesce(h.hit, FALSE) THEN NULL
            WHEN sp.followup_end IS NULL
                 OR sp.followup_end < ix.index_date + to_days(CAST($end_days AS INTEGER))
                THEN 'not followed to the end of the window'
       END AS excluded,
       CAST(coalesce(h.hit, FALSE) AS TINYINT) AS label
FROM ix
LEFT JOIN hits AS h ON h.subject_id = ix.subject_id AND h.index_date = ix.index_date
LEFT JOIN sp ON sp.subject_id = ix.subject_id
ORDER BY ix.subject_id, ix.index_date

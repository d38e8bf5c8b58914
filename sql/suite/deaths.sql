-- Deaths as outcome events (subject_id, time at 00:00 of the death date) from the persons table p.
SELECT subject_id, CAST(death_date AS TIMESTAMP) AS time FROM p WHERE death_date IS NOT NULL

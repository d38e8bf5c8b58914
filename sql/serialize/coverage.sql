-- Description coverage of the events the texts are made of (before truncation): events and distinct codes with
-- a description, and where the descriptions came from.
SELECT count(*) AS events,
       count(d.code) AS events_described,
       count(DISTINCT s.code) AS codes,
       count(DISTINCT d.code) AS codes_described
FROM seen s
LEFT JOIN descriptions d ON d.code = s.code

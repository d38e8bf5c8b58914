-- A task's outcome events (subject_id, time) from the event directory: events whose code is one of $codes, starts
-- with one of $prefixes, or whose OMOP concept is one of $concept_ids; in $domains when given. For visits, a
-- minimum length of stay ($min_stay_days, on end_time - time; 0 = any).
SELECT ev.subject_id, ev.time
FROM ev
WHERE ev.time IS NOT NULL
  AND (len(CAST($domains AS VARCHAR[])) = 0 OR ev.domain IN (SELECT unnest(CAST($domains AS VARCHAR[]))))
  AND (ev.code IN (SELECT unnest(CAST($codes AS VARCHAR[])))
       OR coalesce(list_bool_or(list_transform(CAST($prefixes AS VARCHAR[]), lambda p: starts_with(ev.code, p))),
                   FALSE)
       OR ev.concept_id IN (SELECT unnest(CAST($concept_ids AS BIGINT[])))
       OR $all_codes)
  AND ($min_stay_days = 0 OR date_diff('day', ev.time, ev.end_time) >= $min_stay_days)

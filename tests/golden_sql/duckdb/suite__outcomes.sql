SELECT
  ev.subject_id,
  ev.time
FROM ev
WHERE
  NOT ev.time IS NULL
  AND (
    LENGTH(CAST(:domains AS TEXT[])) = 0
    OR ev.domain IN (
      SELECT
        UNNEST(CAST(:domains AS TEXT[]))
    )
  )
  AND (
    ev.code IN (
      SELECT
        UNNEST(CAST(:codes AS TEXT[]))
    )
    OR COALESCE(
      LIST_BOOL_OR(LIST_TRANSFORM(CAST(:prefixes AS TEXT[]), LAMBDA p : STARTS_WITH(ev.code, p))),
      FALSE
    )
    OR ev.concept_id IN (
      SELECT
        UNNEST(CAST(:concept_ids AS BIGINT[]))
    )
    OR :all_codes
  )
  AND (
    :min_stay_days = 0 OR DATE_DIFF('DAY', ev.time, ev.end_time) >= :min_stay_days
  )

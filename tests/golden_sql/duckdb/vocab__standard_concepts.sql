WITH evidence AS (
  SELECT
    key_id,
    1 AS pri,
    concept_id AS cid
  FROM k
  WHERE
    NOT concept_id IS NULL AND concept_id <> 0
  UNION ALL
  SELECT
    key_id,
    2,
    source_concept_id
  FROM k
  WHERE
    NOT source_concept_id IS NULL AND source_concept_id <> 0
  UNION ALL
  SELECT
    k.key_id,
    3,
    c.concept_id
  FROM k
  JOIN c
    ON UPPER(c.vocabulary_id) = UPPER(k.code_vocab) AND c.concept_code = k.code_value
  UNION ALL
  SELECT
    k.key_id,
    4,
    c.concept_id
  FROM k
  JOIN c
    ON UPPER(c.vocabulary_id) = UPPER(k.source_vocab)
    AND c.concept_code = k.source_value
), resolved AS (
  SELECT
    e.key_id,
    e.pri,
    e.cid AS concept_id
  FROM evidence AS e
  JOIN c
    ON c.concept_id = e.cid AND c.standard_concept = 'S'
  UNION
  SELECT
    e.key_id,
    e.pri,
    r.concept_id_2
  FROM evidence AS e
  JOIN r
    ON r.concept_id_1 = e.cid
  UNION
  SELECT
    e.key_id,
    e.pri,
    e.cid
  FROM evidence AS e
  WHERE
    e.pri = 1
    AND NOT EXISTS(
      SELECT
        1
      FROM c
      WHERE
        c.concept_id = e.cid
    )
)
SELECT DISTINCT
  key_id,
  concept_id
FROM resolved
QUALIFY
  pri = MIN(pri) OVER (PARTITION BY key_id)

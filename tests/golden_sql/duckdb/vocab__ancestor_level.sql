WITH own AS (
  SELECT
    s.key_id,
    s.concept_id,
    COALESCE(MAX(a.min_levels_of_separation), 0) AS depth
  FROM s
  LEFT JOIN a
    ON a.descendant_concept_id = s.concept_id
  GROUP BY
    s.key_id,
    s.concept_id
)
SELECT DISTINCT
  o.key_id,
  a.ancestor_concept_id AS ancestor_id
FROM own AS o
JOIN a
  ON a.descendant_concept_id = o.concept_id
  AND a.min_levels_of_separation = o.depth - 2
WHERE
  o.depth > 2
UNION
SELECT
  key_id,
  concept_id
FROM own
WHERE
  depth <= 2

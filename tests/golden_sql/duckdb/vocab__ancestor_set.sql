SELECT DISTINCT
  s.key_id,
  a.ancestor_concept_id AS ancestor_id
FROM s
JOIN a
  ON a.descendant_concept_id = s.concept_id
JOIN t
  ON t.concept_id = a.ancestor_concept_id
QUALIFY
  a.min_levels_of_separation = MIN(a.min_levels_of_separation) OVER (PARTITION BY s.key_id)
UNION
SELECT
  s.key_id,
  s.concept_id
FROM s
JOIN t
  ON t.concept_id = s.concept_id

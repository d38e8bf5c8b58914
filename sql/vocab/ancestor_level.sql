-- Roll standard concepts s(key_id, concept_id) up to level {level} below the top of their hierarchy, using
-- only the concept's own concept_ancestor rows a: its depth is the largest min_levels_of_separation to any
-- ancestor (the distance to its farthest top concept); the ancestors at min_levels_of_separation
-- = depth - {level} are the roll-up (a shortest path to that top concept passes one at every distance, so
-- there is always at least one). Concepts no deeper than {level}, or absent from concept_ancestor, stay.
WITH own AS (
    SELECT s.key_id, s.concept_id, COALESCE(MAX(a.min_levels_of_separation), 0) AS depth
    FROM s LEFT JOIN a ON a.descendant_concept_id = s.concept_id
    GROUP BY s.key_id, s.concept_id
)
SELECT DISTINCT o.key_id, a.ancestor_concept_id AS ancestor_id
FROM own o
JOIN a ON a.descendant_concept_id = o.concept_id AND a.min_levels_of_separation = o.depth - {level}
WHERE o.depth > {level}
UNION
SELECT key_id, concept_id FROM own WHERE depth <= {level}

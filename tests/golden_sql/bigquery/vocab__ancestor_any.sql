SELECT
  1 AS present
FROM `main`.`concept_ancestor`
LIMIT 1

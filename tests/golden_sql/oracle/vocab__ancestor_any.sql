SELECT
  1 AS present
FROM "main"."concept_ancestor"
FETCH FIRST 1 ROWS ONLY

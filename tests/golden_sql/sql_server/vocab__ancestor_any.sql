SELECT
TOP 1
  1 AS present
FROM [main].[concept_ancestor]

SELECT
  MAX(CAST("CDM_VERSION" AS TEXT))
FROM "main"."cdm_source"

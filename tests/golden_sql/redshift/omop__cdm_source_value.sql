SELECT
  MAX(CAST("cdm_version" AS VARCHAR))
FROM "bench_sql_dialects"."cdm_source"

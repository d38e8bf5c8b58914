SELECT
  MAX(CAST("cdm_version" AS VARCHAR2))
FROM "bench_sql_dialects"."cdm_source"

SELECT
  MAX(CAST(`cdm_version` AS STRING))
FROM `bench_sql_dialects`.`cdm_source`

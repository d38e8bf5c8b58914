-- The CDM version recorded by the ETL, if any (cdm_source.cdm_version, e.g. 'v5.4' or '5.3.1').
SELECT MAX(CAST({cdm_version} AS VARCHAR)) FROM {cdm_source_table}

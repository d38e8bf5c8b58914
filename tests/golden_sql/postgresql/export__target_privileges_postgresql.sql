SELECT
  CURRENT_USER AS role,
  CURRENT_SETTING('transaction_read_only') = 'on' OR PG_IS_IN_RECOVERY() AS read_only,
  n.oid IS NOT NULL AS schema_exists,
  HAS_DATABASE_PRIVILEGE(CURRENT_DATABASE(), 'CREATE') AS can_create_schema,
  COALESCE(
    HAS_SCHEMA_PRIVILEGE(n.oid, 'CREATE') AND HAS_SCHEMA_PRIVILEGE(n.oid, 'USAGE'),
    FALSE
  ) AS can_create_in_schema,
  TO_REGCLASS(:table) IS NOT NULL AS table_exists,
  COALESCE(
    HAS_SCHEMA_PRIVILEGE(n.oid, 'USAGE')
    AND HAS_TABLE_PRIVILEGE(TO_REGCLASS(:table), 'INSERT')
    AND HAS_TABLE_PRIVILEGE(TO_REGCLASS(:table), 'DELETE'),
    FALSE
  ) AS can_write_table
FROM (
  SELECT
    1
) AS one
LEFT JOIN pg_namespace AS n
  ON n.nspname = :schema

-- Can this session write the embedding tables? Read before any vectors are computed (export.check_writable).
-- :schema the target schema, :table its patient_embedding table as a quoted, qualified name. The privilege
-- functions are strict: on a missing schema or table they give NULL, read as "no".
SELECT current_user AS role,
       current_setting('transaction_read_only') = 'on' OR pg_is_in_recovery() AS read_only,
       n.oid IS NOT NULL AS schema_exists,
       has_database_privilege(current_database(), 'CREATE') AS can_create_schema,
       COALESCE(has_schema_privilege(n.oid, 'CREATE') AND has_schema_privilege(n.oid, 'USAGE'), FALSE)
           AS can_create_in_schema,
       to_regclass(:table) IS NOT NULL AS table_exists,
       COALESCE(has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(to_regclass(:table), 'INSERT')
                AND has_table_privilege(to_regclass(:table), 'DELETE'), FALSE) AS can_write_table
FROM (SELECT 1) AS one
LEFT JOIN pg_namespace n ON n.nspname = :schema

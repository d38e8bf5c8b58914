INSERT INTO "bench_sql_dialects_out"."embedding_model" (
  model_id,
  name,
  dims,
  created_at,
  config,
  checksum
)
VALUES
  (:model_id, :name, :dims, :created_at, :config, :checksum) ON CONFLICT(model_id) DO UPDATE SET name = EXCLUDED.name, dims = EXCLUDED.dims, created_at = EXCLUDED.created_at, config = EXCLUDED.config, checksum = EXCLUDED.checksum

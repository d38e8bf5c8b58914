-- The registry row of the model: inserted, or updated in place when the model is already registered.
INSERT INTO {model_table} (model_id, name, dims, created_at, config, checksum)
VALUES (:model_id, :name, :dims, :created_at, :config, :checksum)
ON CONFLICT (model_id) DO UPDATE SET name = EXCLUDED.name, dims = EXCLUDED.dims, created_at = EXCLUDED.created_at,
    config = EXCLUDED.config, checksum = EXCLUDED.checksum

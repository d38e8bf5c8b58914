"""SQL the adapters and exporters run, one file per query, read through importlib.resources."""

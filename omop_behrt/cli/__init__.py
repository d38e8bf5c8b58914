"""The ``omop-behrt`` command line: thin wrappers over the Python API, nothing heavy imported to build it."""

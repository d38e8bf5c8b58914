"""A study in one command: the spec, its run, and the demo on the embedded default."""

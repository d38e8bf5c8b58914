"""``python -m omop_behrt``: the same command line as the ``omop-behrt`` console script."""
from omop_behrt.cli.main import run

run()

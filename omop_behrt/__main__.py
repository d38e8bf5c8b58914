"""``python -m omop_behrt``: the same command line as the ``omop-behrt`` console script."""
from .cli import run

run()

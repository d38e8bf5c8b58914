"""``python -m omop_behrt``: the same command line as the ``omop-behrt`` console script."""
import sys

from .cli import main

sys.exit(main())

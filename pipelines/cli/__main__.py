"""`python -m pipelines.cli ...`: the `fusionindex` console script."""

import sys

from pipelines.cli.entry import console

sys.exit(console())

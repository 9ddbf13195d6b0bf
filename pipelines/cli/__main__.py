"""`python -m pipelines.cli ...`: the `fusionindex` console script."""

import sys

from pipelines.cli.entry import main

sys.exit(main())

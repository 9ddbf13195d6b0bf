"""spark-submit's entry point for fusionindex (spark-submit runs a file, not a console script):

    spark-submit --master yarn [--py-files fusionindex.zip] bin/fusionindex_spark.py embed --engine spark ...

The command line is the `fusionindex` one; `embed --engine spark` uses the SparkContext
spark-submit configured (its master and --conf properties)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Flex template entry point: `fusionindex embed` with the template's parameters.

The launcher calls this file with the parameters as `--name=value` and Dataflow's own options
(--runner, --project, --region, --temp_location, --sdk_container_image, ...), which the CLI
passes to Beam.
"""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))

"""Ray job entrypoint: the same `albert-batch run` contract, for `ray job submit` with a working dir.

    ray job submit --working-dir . -- python pipelines/batch_inference.py --config pipelines/configs/example.yaml

Inside a Ray job, RAY_ADDRESS is set, so the run joins the cluster instead of starting its own Ray.
"""

import sys

from albert_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

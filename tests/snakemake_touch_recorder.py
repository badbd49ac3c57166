"""Run Snakemake, appending every output file it touches to the file named by $NAHUAL_TOUCH_LOG.

Snakemake touches a job's outputs after the job ends. A model server removes
its ready file and socket itself when it gets SIGTERM, so touching them races
with the server and failed a whole CI run; the workflow marks them node-local
so that Snakemake leaves them alone. This recorder lets a test check that.
"""

import os
import sys

import snakemake.io
from snakemake.cli import main

_touch = snakemake.io._IOFile.touch


def recording_touch(self, times=None):
    with open(os.environ["NAHUAL_TOUCH_LOG"], "a") as log:
        log.write(f"{self.file}\n")
    return _touch(self, times)


if __name__ == "__main__":
    snakemake.io._IOFile.touch = recording_touch
    sys.argv[0] = "snakemake"
    main()

"""The pipeline's stages, each a pure core over tables and arrays plus a thin Ray wrapper."""

import os as _os

from pipeline.cluster.runtime import ship_package as _ship_package

# DAG order; stages/dag.py checks that its stage declarations follow it.
STAGE_NAMES = ("keypoints", "posemaps", "pairs", "train", "generate", "evaluate", "report")

_ship_package(_os.path.dirname(__file__))

"""``python -m ltbench``: the command line (how ``torchrun -m ltbench run ...`` starts each rank)."""

import sys

from ltbench.cli import main

sys.exit(main())

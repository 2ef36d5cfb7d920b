"""`python -m chattune ...`: what `torchrun ... -m chattune train CONFIG` and `accelerate launch -m chattune` run."""

import sys

from chattune.cli import main

sys.exit(main())

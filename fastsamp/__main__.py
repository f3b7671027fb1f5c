"""`python -m fastsamp ...` (also under `torchrun -m fastsamp ...`): the `fastsamp` command line."""
import sys

from .cli import main

sys.exit(main())

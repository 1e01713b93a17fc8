"""``python -m dipgo``: what launchers run (``torchrun -m dipgo ...``, ``accelerate launch -m dipgo ...``)."""

import sys

from .cli import main

sys.exit(main())

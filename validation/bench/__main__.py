"""``python -m eigpool.validation.bench``: the CPU benchmark (``eigpool-bench``)."""

import sys

from .cli import main

sys.exit(main())

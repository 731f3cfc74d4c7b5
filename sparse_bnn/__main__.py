"""``python -m sparse_bnn ...`` is ``sparse-bnn ...``."""
import sys

from sparse_bnn.cli import main

sys.exit(main())

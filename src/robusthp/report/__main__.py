"""``python -m robusthp.report SWEEP_DIR ...``: see :mod:`robusthp.report.cli`."""

import sys

from robusthp.report.cli import main

sys.exit(main())

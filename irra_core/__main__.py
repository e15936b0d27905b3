"""``python -m irra_core`` is the workbook runner, ``python -m irra_core.pipeline``."""
import sys

from irra_core.pipeline import main

sys.exit(main())

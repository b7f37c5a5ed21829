"""``python -m simulators.smsc [--port 2775] ...`` (the same as ``avl smsc``)."""

import sys

from simulators.smsc.server import main

sys.exit(main())

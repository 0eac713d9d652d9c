"""``python -m lepton_edge.cli``: the same as the ``lepton-edge`` command."""

import sys

from lepton_edge.cli import main

sys.exit(main())

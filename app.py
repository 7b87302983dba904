"""Serve the web UI: ``python app.py --help`` (the installed command is ``easyanimate-ui``)."""

import sys

from easyanimate.cli.ui import main

if __name__ == "__main__":
    sys.exit(main())

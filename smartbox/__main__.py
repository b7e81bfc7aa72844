import sys

from smartbox.app.cli import main

sys.exit(main())

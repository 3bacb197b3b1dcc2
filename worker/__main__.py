import sys

from virtscale.worker.cli import main

sys.exit(main())

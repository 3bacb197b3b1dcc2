import sys

from virtscale.collector.cli import main

sys.exit(main())

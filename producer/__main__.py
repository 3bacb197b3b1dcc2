import sys

from virtscale.producer.cli import main

sys.exit(main())

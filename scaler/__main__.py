import sys

from virtscale.scaler.cli import main

sys.exit(main())

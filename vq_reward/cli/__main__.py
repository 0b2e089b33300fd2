"""`python -m vq_reward.cli`, the same as the `vq-reward` command."""

import sys

from vq_reward.cli import main


sys.exit(main())

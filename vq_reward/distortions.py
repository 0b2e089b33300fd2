"""Moved to `vq_reward.data.distortions`."""

from vq_reward.data.distortions import *  # noqa: F403
from vq_reward.data.distortions import distort, make_distorted_set, quality_label, severity_name  # noqa: F401

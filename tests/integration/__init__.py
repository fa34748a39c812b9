"""
Tests against the kernel's own IPVS. `make test` runs them inside a VM booted
from Debian's kernel (lvsfeedback.testing.vm), where ip_vs is loaded.
"""

import os

from twisted.trial.unittest import SkipTest


def require_ipvs() -> None:
    """Skip where the kernel has no IPVS, unless the run insists on it."""
    if os.path.exists("/proc/net/ip_vs") and os.geteuid() == 0:
        return
    reason = "needs root on a kernel with IPVS: run `make test`, which boots one in a VM"
    if os.environ.get("LVSFEEDBACK_REQUIRE_IPVS"):
        raise AssertionError(reason + " (LVSFEEDBACK_REQUIRE_IPVS is set, so this is a failure)")
    raise SkipTest(reason)

# twistd -ny tap/director.tac: the director as a .tac file, for deployments
# that prefer `twistd -y`. The configuration file comes from
# $LVSFEEDBACK_DIRECTOR_CONFIG (default /etc/lvsfeedback/director.toml).
import os
import sys

from twisted.application import service
from twisted.python import usage

from lvsfeedback.director import tap

options = tap.Options()
try:
    options.parseOptions(["--config", os.environ.get("LVSFEEDBACK_DIRECTOR_CONFIG", tap.DEFAULT_CONFIG)])
except usage.UsageError as error:
    sys.exit(f"lvs-director: {error}")

application = service.Application("lvs-director")
tap.makeService(options).setServiceParent(application)

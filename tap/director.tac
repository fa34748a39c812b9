# twistd -ny tap/director.tac: the director as a .tac file, for deployments
# that prefer `twistd -y`. The configuration file comes from
# $LVSFEEDBACK_DIRECTOR_CONFIG (default /etc/lvsfeedback/director.toml).
import os
import sys

from twisted.application import service
from twisted.internet import reactor

from lvsfeedback.director.config import ConfigError, load_config
from lvsfeedback.director.service import DirectorService

path = os.environ.get("LVSFEEDBACK_DIRECTOR_CONFIG", "/etc/lvsfeedback/director.toml")
try:
    config = load_config(path)
except ConfigError as error:
    sys.exit(f"lvs-director: refusing to start:\n{error}")

application = service.Application("lvs-director")
director = DirectorService(config, reactor)
director.setServiceParent(application)
reactor.callWhenRunning(director.reload_on_sighup)

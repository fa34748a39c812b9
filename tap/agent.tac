# twistd -ny tap/agent.tac: the agent as a .tac file, for deployments that
# prefer `twistd -y`. The configuration file comes from
# $LVSFEEDBACK_AGENT_CONFIG (default /etc/lvsfeedback/agent.toml).
import os
import sys

from twisted.application import service
from twisted.python import usage

from lvsfeedback.agent import tap

options = tap.Options()
try:
    options.parseOptions(["--config", os.environ.get("LVSFEEDBACK_AGENT_CONFIG", "/etc/lvsfeedback/agent.toml")])
except usage.UsageError as error:
    sys.exit(f"lvs-agent: refusing to start: {error}")

application = service.Application("lvs-agent")
tap.makeService(options).setServiceParent(application)

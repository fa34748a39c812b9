"""twistd lvs-director: options and service."""

from __future__ import annotations

from twisted.python import usage

DEFAULT_CONFIG = "/etc/lvsfeedback/director.toml"


class Options(usage.Options):
    synopsis = "[--config FILE] [--observe]"
    longdesc = (
        "Accept lvs-agent connections over NECP, ask each agent for its health on every "
        "keepalive, and turn health into IPVS real-server weights. Everything is set in the "
        "TOML file (see tap/director.toml); SIGHUP rereads it, and a bad file is refused "
        "while the running config stays."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The director's configuration file (TOML)."],
    ]
    optFlags = [
        ["observe", None, "Compute and expose weights without writing them to the kernel "
                          "(overrides [director] observe)."],
    ]

    def postOptions(self):
        from lvsfeedback.director.config import ConfigError, load_config

        try:
            self.loaded = load_config(self["config"])
        except ConfigError as error:
            raise usage.UsageError(f"refusing to start:\n{error}") from None


def makeService(options, reactor=None):
    from lvsfeedback.director.service import DirectorService

    if reactor is None:
        from twisted.internet import reactor
    director = DirectorService(options.loaded, reactor, observe=True if options["observe"] else None)
    reactor.callWhenRunning(director.reload_on_sighup)
    return director

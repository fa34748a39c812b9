"""twistd lvs-director: options and service."""

from __future__ import annotations

import gc

from twisted.python import usage

DEFAULT_CONFIG = "/etc/lvsfeedback/director.toml"
# Python collects its youngest objects every 700 allocations by default. A
# pass over 10,000 servers allocates hundreds of thousands that live until
# the next pass, and each collection walks them again: collecting every
# 10,000 made 10,000-server passes 0.69x as costly, measured in memory (#15). Cyclic garbage
# is still collected, a little later; the older generations as before.
GC_THRESHOLDS = (10_000, 10, 10)


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


def tune_garbage_collection() -> None:
    """The director process's collector thresholds: L{GC_THRESHOLDS}."""
    gc.set_threshold(*GC_THRESHOLDS)


def makeService(options, reactor=None):
    from lvsfeedback.director.service import DirectorService

    tune_garbage_collection()
    if reactor is None:
        from twisted.internet import reactor
    director = DirectorService(options.loaded, reactor, observe=True if options["observe"] else None)
    reactor.callWhenRunning(director.reload_on_sighup)
    return director

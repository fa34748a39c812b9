"""twistd lvs-agent: options and service."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

from twisted.python import usage


class Options(usage.Options):
    synopsis = "--director ENDPOINT --service PROTO:PORT[:FORWARDING] --metric SPEC [...] | --config FILE"
    longdesc = (
        "Measure this real server's load and report a health index 0..100 per service to every "
        "LVS director listed, over NECP. Flags override the config file. SIGTERM drains (STOP "
        "to every director, then exit); SIGUSR2 drains and stays up answering health 0; SIGUSR1 "
        "undrains; SIGHUP rereads the config file (a drained agent stays drained)."
    )
    optParameters = [
        ["config", "c", None, "Agent configuration file (TOML); see tap/agent.toml."],
        ["secret-file", None, None, "File holding the shared NECP secret (authenticate every message)."],
        ["interval", None, None, "Seconds between two load samples [default: 1.0]."],
        ["smoothing", None, None, "Weight of the newest reading in each metric's moving average, 0..1 [default: 0.5]."],
        ["combine", None, None, "How a flag-given service combines its metrics: worst or mean [default: worst]."],
        ["haproxy-agent", None, None, "Also answer HAProxy agent-check on this endpoint, e.g. tcp:9777."],
        ["drain-timeout", None, None, "Seconds to wait for every director's STOP_ACK when draining [default: 10]."],
        ["capacity", None, None, "What to tell directors that ask of a service's capacity: auto (its cgroup "
         "metric's cpu.max quota, else the CPUs the agent may run on), a number of CPUs, or off [default: auto]."],
    ]

    def __init__(self):
        super().__init__()
        self.directors: list[str] = []
        self.services: list[str] = []
        self.metrics: list[str] = []

    def opt_director(self, endpoint):
        """A director to report to, as a Twisted client endpoint (tcp:HOST:3262). Repeatable."""
        self.directors.append(endpoint)

    def opt_service(self, service):
        """A service this server provides, PROTO:PORT[:FORWARDING] (dr, tun or nat; dr by default). Repeatable."""
        self.services.append(service)

    def opt_metric(self, spec):
        """A load metric for the flag-given services (or every service of the file), e.g. cpu, loadavg:high=2. Repeatable."""
        self.metrics.append(spec)

    opt_d = opt_director
    opt_s = opt_service
    opt_m = opt_metric

    def postOptions(self):
        """Read and check everything; build nothing (makeService does, on its reactor)."""
        from lvsfeedback.agent.config import AgentConfigError
        from lvsfeedback.agent.metrics.spec import MetricRegistry
        from lvsfeedback.agent.service import check_metrics

        try:
            settings = self.read_settings()
        except AgentConfigError as error:
            raise usage.UsageError(str(error)) from None
        registry = MetricRegistry.discover()
        problems = check_metrics(settings, registry)
        if problems:
            raise usage.UsageError("\n".join(problems))
        self.settings = settings
        self.metric_registry = registry

    def read_settings(self):
        """
        The config file, read now, with the flags on top: at start and at
        each reload. AgentConfigError names every problem.
        """
        from lvsfeedback.agent.config import AgentConfigError, AgentSettings, check, load_agent_config

        settings = load_agent_config(self["config"]) if self["config"] else AgentSettings()
        try:
            settings = self._with_flags(settings)
        except ValueError as error:
            raise AgentConfigError([str(error)]) from None
        problems = check(settings)
        if problems:
            raise AgentConfigError(problems)
        return settings

    def _with_flags(self, settings):
        from lvsfeedback.agent.config import AgentConfigError, check_number, parse_service

        changes = {}
        if self.directors:
            changes["directors"] = tuple(self.directors)
        services = settings.services
        if self.services:
            services = tuple(replace(parse_service(text), combine=self["combine"] or "worst") for text in self.services)
        if self.metrics:
            services = tuple(replace(service, metrics=tuple(self.metrics)) for service in services)
        changes["services"] = services
        problems: list[str] = []
        for option, key in (("interval", "interval"), ("smoothing", "smoothing"), ("drain-timeout", "drain_timeout")):
            if self[option] is not None:
                try:
                    value = float(self[option])
                except ValueError:
                    problems.append(f"--{option}: must be a number, got {self[option]!r}")
                else:
                    changes[key] = check_number(problems, f"--{option}", key, value)
        if problems:
            raise AgentConfigError(problems)
        if self["secret-file"]:
            changes["secret_file"] = Path(self["secret-file"])
        if self["haproxy-agent"]:
            changes["haproxy_agent"] = self["haproxy-agent"]
        if self["capacity"] is not None:
            from lvsfeedback.agent.capacity import parse_capacity

            try:
                changes["capacity"] = parse_capacity(self["capacity"])
            except ValueError as error:
                raise ValueError(f"--capacity: {error}") from None
        return replace(settings, **changes)


def makeService(options, reactor=None):
    from lvsfeedback.agent.service import AgentService, build_sampler

    if reactor is None:
        from twisted.internet import reactor
    sampler = build_sampler(options.settings, reactor, options.metric_registry)
    agent = AgentService(options.settings, reactor, sampler=sampler)

    def on_signals():
        signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(agent.drain))
        # SIGUSR1 takes the place of twistd's log-file rotation: the agent
        # logs to the journal under systemd (tap/lvs-agent.service).
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(agent.undrain))
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(agent.reload, options.read_settings))

    reactor.callWhenRunning(on_signals)
    return agent

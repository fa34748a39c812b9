"""
A metric plugin that imports its implementation only when a spec uses it.

Plugin modules are imported by every C{twistd --help}; naming the builder by
its dotted path keeps psutil, twisted.web and the rest out of that scan.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from twisted.python.reflect import namedAny
from zope.interface import implementer

from lvsfeedback.agent.metrics.interfaces import IMetricFactory, OnError


@implementer(IPlugin, IMetricFactory)
class LazyMetricFactory:
    """
    An L{IMetricFactory} whose C{build} is a function named by dotted path,
    e.g. C{"lvsfeedback.agent.metrics.cpu.build"}; the function takes
    C{(options, environment)} and returns an C{ILoadMetric}.
    """

    def __init__(
        self,
        name: str,
        builder: str,
        description: str,
        on_error_default: OnError = OnError.IGNORE,
    ):
        self.name = name
        self.builder = builder
        self.description = description
        self.on_error_default = on_error_default

    def build(self, options, environment):
        return namedAny(self.builder)(options, environment)

    def __repr__(self) -> str:
        return f"<LazyMetricFactory {self.name} -> {self.builder}>"

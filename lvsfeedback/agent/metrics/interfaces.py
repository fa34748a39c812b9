"""
The contracts between metrics, their plugins and the sampler.

Only zope.interface and the standard library are imported here: this module
is loaded by every plugin scan.
"""

from __future__ import annotations

import enum

from zope.interface import Attribute, Interface


class OnError(str, enum.Enum):
    """What a failing metric contributes to its service's health."""

    #: Leave the metric out of the combination until it reads again.
    IGNORE = "ignore"
    #: Count the metric as health 0 (the service is unfit) while it fails.
    ZERO = "zero"


class ILoadMetric(Interface):
    """
    One configured measurement of this server's load, as a health index.
    """

    def sample():
        """
        Take a reading now.

        @return: the health, a number from 0 (send no work) to 100 (idle),
            or a L{Deferred} firing with it when the reading is asynchronous.
            A Deferred should be cancellable: the sampler cancels readings
            that take too long.
        @raise MetricReadError: (or errback with it) when no reading could
            be taken; other exceptions count as failures too.
        """


class IMetricFactory(Interface):
    """
    A named kind of metric, found with C{twisted.plugin.getPlugins}.

    A plugin object provides both this and L{twisted.plugin.IPlugin}.
    """

    name = Attribute("The metric's name as written in a spec, e.g. C{'cpu'}.")
    description = Attribute("One line saying what the metric measures.")
    on_error_default = Attribute(
        "The L{OnError} used when a spec gives no C{on_error} key."
    )

    def build(options, environment):
        """
        Make a metric from its spec options.

        @param options: a L{lvsfeedback.agent.metrics.options.MetricOptions}
            holding the spec's keys (C{weight} and C{on_error} already taken
            out). Read every key you accept through it; keys left unread are
            refused afterwards as unknown.
        @param environment: a
            L{lvsfeedback.agent.metrics.environment.MetricEnvironment}: the
            reactor and the file-system roots to read. Keep the reactor for
            the readings. The agent checks specs before it has its reactor
            by building them on a throwaway L{twisted.internet.task.Clock}:
            a build may read the time, and must not start anything.
        @return: an L{ILoadMetric} provider.
        @raise MetricSpecError: for a bad option value.
        """

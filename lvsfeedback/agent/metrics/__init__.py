"""
The agent's load metrics: each one turns a reading of this server into a
health index 0..100 (100 = idle, 0 = send no work).

Metrics are configured from spec strings (see L{lvsfeedback.agent.metrics.spec})
and found as Twisted plugins providing
L{lvsfeedback.agent.metrics.interfaces.IMetricFactory}, so a site adds its
own metric by dropping a module into any C{twisted/plugins/} directory.

This package and its C{interfaces}, C{plugin} and C{spec} modules stay cheap
to import: C{twistd --help} imports them while scanning plugins. Each
built-in metric lives in its own module, imported only when a spec names it.
"""

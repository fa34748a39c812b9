"""Finding metrics as Twisted plugins: the built-ins and a site's own."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.internet.task import Clock
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lvsfeedback.agent.metrics.environment import MetricEnvironment
from lvsfeedback.agent.metrics.interfaces import ILoadMetric, IMetricFactory, OnError
from lvsfeedback.agent.metrics.spec import MetricRegistry

BUILTIN = {
    "cgroup", "command", "connections", "cpu", "http", "loadavg", "memory", "pressure", "probe"
}
# The least spec of each built-in, for building one of every kind.
LEAST_SPECS = {
    "cgroup": "cgroup:path=lab/rs1",
    "command": "command:cmd=true",
    "connections": "connections:port=8080,high=8",
    "cpu": "cpu",
    "http": "http:url=http://127.0.0.1:9/load",
    "loadavg": "loadavg",
    "memory": "memory",
    "pressure": "pressure",
    "probe": "probe:port=80",
}
CGROUP_FIXTURE = Path(__file__).parent / "fixtures" / "metrics" / "cgroup"

# A site's metric as a third party would write it: no lvsfeedback helper
# classes, only the two interfaces.
SITE_PLUGIN = '''
from twisted.plugin import IPlugin
from zope.interface import implementer

from lvsfeedback.agent.metrics.interfaces import ILoadMetric, IMetricFactory, OnError


@implementer(ILoadMetric)
class QueueDepth:
    def __init__(self, depth, limit):
        self.depth, self.limit = depth, limit

    def sample(self):
        return max(0.0, 100.0 * (1 - self.depth / self.limit))


@implementer(IPlugin, IMetricFactory)
class QueueDepthFactory:
    name = "queue"
    description = "jobs waiting in the site's queue"
    on_error_default = OnError.ZERO

    def build(self, options, environment):
        return QueueDepth(options.number("depth"), options.number("limit", 10.0, positive=True))


queueMetric = QueueDepthFactory()
'''


class BuiltinPluginTests(SynchronousTestCase):
    def test_every_builtin_is_found_in_twisted_plugins(self) -> None:
        factories = {factory.name: factory for factory in getPlugins(IMetricFactory)}
        self.assertTrue(BUILTIN <= set(factories), sorted(factories))
        for factory in factories.values():
            self.assertTrue(IPlugin.providedBy(factory))

    def test_every_builtin_provides_the_declared_interfaces(self) -> None:
        registry = MetricRegistry.discover()
        environment = MetricEnvironment(Clock(), cgroup_root=CGROUP_FIXTURE.absolute(), cpu_count=4)
        self.assertEqual(set(LEAST_SPECS), BUILTIN)
        for name, spec in sorted(LEAST_SPECS.items()):
            with self.subTest(name):
                self.assertTrue(verifyObject(IMetricFactory, registry.factory(name)))
                self.assertTrue(verifyObject(ILoadMetric, registry.build(spec, environment).metric))

    def test_only_probe_counts_failures_as_zero(self) -> None:
        registry = MetricRegistry.discover()
        zeroed = {
            name for name in BUILTIN if registry.factory(name).on_error_default is OnError.ZERO
        }
        self.assertEqual(zeroed, {"probe"})

    def test_plugin_module_imports_no_implementation(self) -> None:
        check = (
            "import sys, twisted.plugins.lvsfeedback_metrics\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'psutil'"
            " or m.startswith('twisted.web') or m.startswith('lvsfeedback.agent.metrics.')"
            " and m.rpartition('.')[2] not in ('interfaces', 'plugin'))\n"
            "print(heavy)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).parents[2],
        )
        self.assertEqual((result.stdout.strip(), result.stderr), ("[]", ""))


class SitePluginTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp()).absolute()
        package = directory / "site_metric_plugins"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "queue_depth.py").write_text(textwrap.dedent(SITE_PLUGIN))
        sys.path.insert(0, str(directory))
        self.addCleanup(sys.path.remove, str(directory))
        for name in ("site_metric_plugins", "site_metric_plugins.queue_depth"):
            self.addCleanup(sys.modules.pop, name, None)
        self.package = importlib.import_module("site_metric_plugins")

    def test_site_metric_is_found_in_its_plugin_package(self) -> None:
        names = [factory.name for factory in getPlugins(IMetricFactory, self.package)]
        self.assertEqual(names, ["queue"])

    def test_site_metric_builds_from_a_spec_like_a_builtin(self) -> None:
        registry = MetricRegistry.discover(self.package)
        configured = registry.build("queue:depth=5,weight=2", MetricEnvironment(Clock()))
        self.assertTrue(ILoadMetric.providedBy(configured.metric))
        self.assertEqual(
            (configured.metric.sample(), configured.weight, configured.on_error),
            (50.0, 2.0, OnError.ZERO),
        )

    def test_site_metric_keys_are_checked_like_a_builtin(self) -> None:
        registry = MetricRegistry.discover(self.package)
        error = self.assertRaises(
            ValueError, registry.build, "queue:depth=5,size=3", MetricEnvironment(Clock())
        )
        self.assertEqual(
            str(error),
            "metric 'queue': unknown key 'size' (known keys: depth, limit, on_error, weight)",
        )

"""
Tests for lvsfeedback.director.config: the sample file, the defaults, the
helpers the rest of the director uses, and the exact message of every kind
of problem.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director import config as config_module
from lvsfeedback.director.config import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_AGENTS,
    DEFAULT_STATUS_LISTEN,
    EVERYWHERE,
    ConfigError,
    MarkRule,
    OnLeave,
    check_config,
    load_config,
)
from lvsfeedback.director.policy import LostAgentAction, Mode, PolicySettings
from lvsfeedback.director.protocol import MAX_EXCEPTIONS_PER_AGENT
from lvsfeedback.ipvs.model import DestKey, ServiceKey, VirtualService
from lvsfeedback.necp.factory import MAX_QUEUED_OUTPUT
from tests.helpers.config import ConfigFileTestCase

SAMPLE = Path(__file__).parents[2] / "tap" / "director.toml"

WEB = """
[[service]]
name = "web"
protocol = "tcp"
address = "192.0.2.10"
port = 80
"""

SHOP = """
[[service]]
name = "shop"
protocol = "fwmark"
fwmark = 7
"""


class SampleTests(SynchronousTestCase):
    def test_sample_loads_cleanly(self):
        self.assertEqual(check_config(SAMPLE), [])

    def test_sample_services(self):
        config = load_config(SAMPLE)
        self.assertEqual(
            [service.key for service in config.services],
            [
                ServiceKey.for_address("tcp", "192.0.2.10", 80),
                ServiceKey.for_address("tcp", "2001:db8::10", 443),
                ServiceKey.for_fwmark(1, socket.AF_INET),
            ],
        )
        web, api6, shop = config.services
        self.assertEqual(
            [(real.dest_key, real.base_weight, real.forwarding) for real in web.reals],
            [(DestKey.of("10.1.0.11", 80), 100, "dr"), (DestKey.of("10.1.0.12", 80), 200, "dr")],
        )
        self.assertEqual([real.dest_key.port for real in api6.reals], [8443, 8443])
        self.assertEqual(shop.mark, MarkRule(ipaddress.ip_network("192.0.2.20/32"), "tcp", (80, 443)))
        self.assertEqual(
            [real.dest_key for real in shop.reals], [DestKey.of("10.1.0.31", 0), DestKey.of("10.1.0.32", 0)]
        )

    def test_sample_service_policy_overrides_the_global_one(self):
        config = load_config(SAMPLE)
        web = config.services[0]
        self.assertEqual((config.policy.mode, config.policy.slow_start), (Mode.CAPACITY, 10.0))
        self.assertEqual((web.policy.mode, web.policy.slow_start), (Mode.CAPACITY, 30.0))
        self.assertEqual(web.policy.lost_agent, config.policy.lost_agent)


class DefaultsTests(ConfigFileTestCase):
    def test_empty_file_gives_defaults(self):
        config = self.load("")
        self.assertEqual(config.director.listen, DEFAULT_LISTEN)
        self.assertEqual(config.director.max_agents, DEFAULT_MAX_AGENTS)
        self.assertEqual(config.director.allow, EVERYWHERE)
        self.assertEqual(config.director.update_interval, 2.0)
        self.assertEqual((config.director.observe, config.director.weights_only), (False, False))
        self.assertIsNone(config.director.secret_file)
        self.assertEqual((config.status.listen, config.status.token_file), (DEFAULT_STATUS_LISTEN, None))
        self.assertEqual(config.policy, PolicySettings())
        self.assertEqual(config.services, ())

    def test_necp_limits_default_to_the_protocols_own(self):
        config = self.load("")
        self.assertEqual(config.necp.max_exceptions_per_agent, MAX_EXCEPTIONS_PER_AGENT)
        self.assertEqual(config.necp.max_queued_output, MAX_QUEUED_OUTPUT)
        self.assertEqual(self.load("[necp]\nmax_exceptions_per_agent = 10\n").necp.max_exceptions_per_agent, 10)

    def test_service_defaults(self):
        service = self.load(WEB + '[[service.real]]\naddress = "10.0.0.1"\n').services[0]
        self.assertEqual(service.virtual_service(), VirtualService(service.key, "wlc", 0))
        self.assertEqual(
            (service.forwarding, service.auto_join, service.on_leave), ("nat", (), OnLeave.REMOVE)
        )
        self.assertIsNone(service.mark)
        real = service.reals[0]
        self.assertEqual(
            (real.dest_key, real.base_weight, real.forwarding), (DestKey.of("10.0.0.1", 80), 100, "nat")
        )

    def test_real_server_inherits_service_forwarding(self):
        service = self.load(WEB + 'forwarding = "tun"\n[[service.real]]\naddress = "10.0.0.1"\n').services[0]
        self.assertEqual(service.reals[0].forwarding, "tun")

    def test_fwmark_service_defaults(self):
        service = self.load(SHOP + '[[service.real]]\naddress = "10.0.0.1"\n').services[0]
        self.assertEqual(service.key, ServiceKey.for_fwmark(7, socket.AF_INET))
        self.assertEqual(service.reals[0].dest_key, DestKey.of("10.0.0.1", 0))

    def test_fwmark_ipv6_service(self):
        service = self.load(SHOP + 'family = "inet6"\n[[service.real]]\naddress = "fd00::1"\n').services[0]
        self.assertEqual(service.key.family, socket.AF_INET6)


class ValueTests(ConfigFileTestCase):
    def test_auto_join_settings(self):
        text = WEB + 'auto_join = ["10.1.0.0/16", "10.9.9.9"]\nauto_join_weight = 30\non_leave = "quiesce"\n'
        service = self.load(text).services[0]
        self.assertEqual(
            (service.auto_join, service.auto_join_weight, service.on_leave),
            ((ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("10.9.9.9/32")), 30, OnLeave.QUIESCE),
        )

    def test_secret_file_is_relative_to_the_config_file(self):
        path = self.write('[director]\nsecret_file = "necp.secret"\n')
        (path.parent / "necp.secret").write_text("s3cret\n")
        self.assertEqual(load_config(path).director.secret_file, path.parent / "necp.secret")

    def test_the_secret_is_read_with_the_file_and_never_shown(self):
        path = self.write('[director]\nsecret_file = "necp.secret"\n')
        (path.parent / "necp.secret").write_text("s3cret\n")
        director = load_config(path).director
        self.assertEqual(director.secret, b"s3cret")
        self.assertNotIn("s3cret", repr(director))


class ProblemFormatTests(ConfigFileTestCase):
    def test_problem_names_file_key_and_reason(self):
        path = self.write(
            WEB
            + '[[service.real]]\naddress = "10.0.0.1"\n'
            + WEB.replace("web", "api").replace("80", "81")
            + ('[[service.real]]\naddress = "10.0.0.2"\nweight = "ten"\n')
        )
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertEqual(
            str(caught.exception),
            f'{path}: service[1].real[0].weight: must be an integer 1..65535, got "ten"',
        )

    def test_every_problem_is_reported_at_once(self):
        path = self.write(
            '[director]\nobserve = "yes"\nupdate_interval = 0\n[policy]\nmode = "fast"\n'
            + WEB.replace("80", "0")
        )
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertEqual(
            caught.exception.problems,
            (
                f"{path}: director.update_interval: must be a number of seconds > 0, got 0",
                f'{path}: director.observe: must be true or false, got "yes"',
                f'{path}: policy.mode: must be one of health, capacity; got "fast"',
                f"{path}: service[0].port: must be an integer 1..65535, got 0",
            ),
        )
        self.assertEqual(str(caught.exception), "\n".join(caught.exception.problems))

    def test_toml_syntax_error_names_line_and_column(self):
        self.assertProblems("[director]\nobserve = tru\n", ["line 2, column 11: invalid TOML: Invalid value"])

    def test_toml_syntax_error_at_end_of_file(self):
        self.assertProblems("[director]\nallow = [\n", ["end of file: invalid TOML: Invalid value"])

    def test_duplicate_key_is_a_syntax_error(self):
        self.assertProblems(
            "[director]\nobserve = true\nobserve = false\n",
            ["line 3, column 16: invalid TOML: Cannot overwrite a value"],
        )

    def test_missing_file(self):
        path = Path(self.mktemp())
        self.assertEqual(check_config(path), [f"{path}: cannot read: No such file or directory"])

    def test_file_that_is_not_utf8(self):
        path = self.write("")
        path.write_bytes(b'[director]\nlisten = "\xff"\n')
        self.assertEqual(check_config(path), [f"{path}: line 2: not UTF-8 text"])


class UnknownKeyTests(ConfigFileTestCase):
    def test_misspelt_key_suggests_the_right_one(self):
        self.assertProblems(
            WEB + '[[service.real]]\naddress = "10.0.0.1"\nwieght = 3\n',
            ['service[0].real[0].wieght: unknown key; did you mean "weight"?'],
        )

    def test_unrelated_key_lists_the_known_ones(self):
        self.assertProblems(
            "[status]\ncolour = 1\n", ["status.colour: unknown key; expected one of: listen, token_file"]
        )

    def test_unknown_section(self):
        self.assertProblems("[polcy]\nfloor = 2\n", ['polcy: unknown key; did you mean "policy"?'])

    def test_misspelt_policy_knob(self):
        self.assertProblems(
            "[policy]\nslowstart = 2\n", ['policy.slowstart: unknown key; did you mean "slow_start"?']
        )


class ValueProblemTests(ConfigFileTestCase):
    def test_max_agents_must_be_a_positive_integer(self):
        self.assertProblems(
            "[director]\nmax_agents = 0\n", ["director.max_agents: must be an integer 1..1000000, got 0"]
        )

    def test_required_keys(self):
        self.assertProblems(
            "[[service]]\n[[service.real]]\n",
            [
                "service[0].name: is required",
                "service[0].protocol: is required",
                "service[0].real[0].address: is required",
            ],
        )

    def test_address_service_requires_address_and_port(self):
        self.assertProblems(
            '[[service]]\nname = "web"\nprotocol = "udp"\n',
            ["service[0].address: is required", "service[0].port: is required"],
        )

    def test_fwmark_service_requires_a_mark(self):
        self.assertProblems(
            '[[service]]\nname = "m"\nprotocol = "fwmark"\n', ["service[0].fwmark: is required"]
        )

    def test_fwmark_out_of_range(self):
        self.assertProblems(
            SHOP.replace("fwmark = 7", "fwmark = 4294967296"),
            ["service[0].fwmark: must be an integer 1..4294967295, got 4294967296"],
        )

    def test_mark_table_of_an_invalid_fwmark_is_still_read(self):
        self.assertProblems(
            SHOP.replace("fwmark = 7", 'fwmark = "7"') + '[service.mark]\ndestination = "192.0.2.1"\nport = 80\n',
            [
                'service[0].fwmark: must be an integer 1..4294967295, got "7"',
                'service[0].mark.port: unknown key; did you mean "ports"?',
            ],
        )

    def test_fwmark_zero(self):
        self.assertProblems(
            SHOP.replace("fwmark = 7", "fwmark = 0"),
            ["service[0].fwmark: must be an integer 1..4294967295, got 0"],
        )

    def test_port_out_of_range(self):
        self.assertProblems(
            WEB + '[[service.real]]\naddress = "10.0.0.1"\nport = 65536\n',
            ["service[0].real[0].port: must be an integer 1..65535, got 65536"],
        )

    def test_boolean_is_not_an_integer(self):
        self.assertProblems(
            WEB + "persistence = true\n", ["service[0].persistence: must be an integer 0..4294967, got true"]
        )

    def test_unknown_scheduler(self):
        self.assertProblems(
            WEB + 'scheduler = "fastest"\n',
            [
                "service[0].scheduler: must be one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos;"
                ' got "fastest"'
            ],
        )

    def test_unknown_protocol_is_reported_alone(self):
        self.assertProblems(
            '[[service]]\nname = "x"\nprotocol = "fwmrk"\nfwmark = 3\n',
            ['service[0].protocol: must be one of tcp, udp, sctp, fwmark; got "fwmrk"'],
        )

    def test_unknown_forwarding_on_the_real_server(self):
        self.assertProblems(
            WEB + '[[service.real]]\naddress = "10.0.0.1"\nforwarding = "masq"\n',
            ['service[0].real[0].forwarding: must be one of nat, tun, dr; got "masq"'],
        )

    def test_unknown_on_leave(self):
        self.assertProblems(
            WEB + 'on_leave = "delete"\n',
            ['service[0].on_leave: must be one of remove, quiesce; got "delete"'],
        )

    def test_invalid_address(self):
        self.assertProblems(
            WEB.replace('"192.0.2.10"', '"www.example.com"'),
            ['service[0].address: must be an IPv4 or IPv6 address, got "www.example.com"'],
        )

    def test_scoped_ipv6_address(self):
        self.assertProblems(
            WEB + '[[service.real]]\naddress = "fe80::1%eth0"\n',
            ['service[0].real[0].address: must be an address without a %scope, got "fe80::1%eth0"'],
        )

    def test_network_with_host_bits(self):
        self.assertProblems(
            '[director]\nallow = ["10.0.0.1/8"]\n',
            ["director.allow[0]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"],
        )

    def test_invalid_network_and_non_list(self):
        self.assertProblems(
            '[director]\nallow = ["nowhere"]\n' + WEB + 'auto_join = "10.0.0.0/8"\n',
            [
                'director.allow[0]: must be an address or network such as 192.0.2.0/24, got "nowhere"',
                'service[0].auto_join: must be a list, got "10.0.0.0/8"',
            ],
        )

    def test_empty_allow_list(self):
        self.assertProblems(
            "[director]\nallow = []\n", ["director.allow: must not be empty (leave it out for the default)"]
        )

    def test_invalid_endpoint(self):
        self.assertProblems(
            '[director]\nlisten = "tcp:http"\n',
            [
                "director.listen: not a Twisted server endpoint "
                "(invalid literal for int() with base 10: 'http'), got \"tcp:http\""
            ],
        )

    def test_unknown_endpoint_type(self):
        self.assertProblems(
            '[status]\nlisten = "tpc:9101"\n',
            ["status.listen: not a Twisted server endpoint (Unknown endpoint type: 'tpc'), got \"tpc:9101\""],
        )

    def test_secret_file_missing(self):
        path = self.write('[director]\nsecret_file = "absent.secret"\n')
        self.assertEqual(
            check_config(path),
            [
                f"{path}: director.secret_file: cannot read {path.parent / 'absent.secret'}: No such file or directory"
            ],
        )

    def test_token_file_empty(self):
        path = self.write('[status]\ntoken_file = "status.token"\n')
        (path.parent / "status.token").write_text("\n")
        self.assertEqual(
            check_config(path), [f"{path}: status.token_file: {path.parent / 'status.token'} is empty"]
        )

    def test_secret_file_unreadable(self):
        if os.geteuid() == 0:
            self.skipTest("root reads every file")
        path = self.write('[director]\nsecret_file = "locked.secret"\n')
        locked = path.parent / "locked.secret"
        locked.write_text("s3cret")
        locked.chmod(0)
        self.assertEqual(
            check_config(path), [f"{path}: director.secret_file: cannot read {locked}: Permission denied"]
        )

    def test_service_must_be_an_array_of_tables(self):
        self.assertProblems(
            '[service]\nname = "web"\n',
            ['service: must be an array of tables ([[service]]), got {"name": "web"}'],
        )

    def test_real_must_be_an_array_of_tables(self):
        self.assertProblems(
            WEB + 'real = "10.0.0.1"\n',
            ['service[0].real: must be an array of tables ([[service[0].real]]), got "10.0.0.1"'],
        )


class NECPProblemTests(ConfigFileTestCase):
    def test_necp_limits_out_of_range_are_named(self):
        self.assertProblems(
            "[necp]\nmax_exceptions_per_agent = -1\nmax_queued_output = 10\nmax_agents = 5\n",
            [
                "necp.max_exceptions_per_agent: must be an integer 0..65536, got -1",
                "necp.max_queued_output: must be an integer 1024..67108864, got 10",
                "necp.max_agents: unknown key; expected one of: max_exceptions_per_agent, max_queued_output",
            ],
        )


class PolicyProblemTests(ConfigFileTestCase):
    def test_every_knob_is_read(self):
        config = self.load(
            "[policy]\n"
            'mode = "capacity"\nsmoothing_half_life = 0\nhysteresis = 0.1\nfloor = 2\nceiling = 1000\n'
            'slow_start = 5\nlost_agent = "remove"\nstale_after = 6\npanic_threshold = 0.3\n'
            "min_utilisation = 0.2\ndead_band = 0.05\n"
        )
        self.assertEqual(
            config.policy,
            PolicySettings(Mode.CAPACITY, 0.0, 0.1, 2, 1000, 5.0, LostAgentAction.REMOVE, 6.0, 0.3, 0.2, 0.05),
        )

    def test_knob_ranges(self):
        self.assertProblems(
            "[policy]\nhysteresis = 1\nfloor = 0\nstale_after = 0\npanic_threshold = 1.5\nmin_utilisation = 0\ndead_band = 1\n"
            'smoothing_half_life = -1\nlost_agent = "forget"\nslow_start = nan\n',
            [
                "policy.smoothing_half_life: must be a number of seconds >= 0, got -1",
                "policy.hysteresis: must be a number 0 <= h < 1, got 1",
                "policy.floor: must be an integer 1..65535, got 0",
                "policy.slow_start: must be a number of seconds >= 0, got NaN",
                'policy.lost_agent: must be one of keep, static, quiesce, remove; got "forget"',
                "policy.stale_after: must be a number of seconds > 0, got 0",
                "policy.panic_threshold: must be a number 0..1, got 1.5",
                "policy.min_utilisation: must be a number 0 < u <= 1, got 0",
                "policy.dead_band: must be a number 0 <= b < 1, got 1",
            ],
        )

    def test_floor_above_ceiling(self):
        self.assertProblems(
            "[policy]\nfloor = 200\nceiling = 100\n",
            ["policy.floor: floor (200) must not be greater than ceiling (100)"],
        )

    def test_service_ceiling_below_global_floor(self):
        self.assertProblems(
            "[policy]\nfloor = 20\n" + WEB + "[service.policy]\nceiling = 10\n",
            ["service[0].policy.ceiling: floor (20) must not be greater than ceiling (10)"],
        )

    def test_service_policy_knob_is_checked(self):
        self.assertProblems(
            WEB + '[service.policy]\nmode = "weighted"\n',
            ['service[0].policy.mode: must be one of health, capacity; got "weighted"'],
        )


class ConsistencyProblemTests(ConfigFileTestCase):
    def test_real_server_family_must_match_service(self):
        self.assertProblems(
            WEB + '[[service.real]]\naddress = "fd00::1"\n',
            ["service[0].real[0].address: fd00::1 is not IPv4, as the service is"],
        )

    def test_fwmark_real_server_family_must_match_family(self):
        self.assertProblems(
            SHOP + 'family = "inet6"\n[[service.real]]\naddress = "10.0.0.1"\n',
            ["service[0].real[0].address: 10.0.0.1 is not IPv6, as the service is"],
        )

    def test_auto_join_family_must_match_service(self):
        self.assertProblems(
            WEB + 'auto_join = ["10.0.0.0/8", "fd00::/8"]\n',
            ["service[0].auto_join[1]: fd00::/8 is not IPv4"],
        )

    def test_direct_routing_keeps_the_service_port(self):
        self.assertProblems(
            WEB + 'forwarding = "dr"\n[[service.real]]\naddress = "10.0.0.1"\nport = 8080\n',
            ['service[0].real[0].port: must be the service port 80 with forwarding "dr", got 8080'],
        )

    def test_nat_may_translate_the_port(self):
        service = self.load(WEB + '[[service.real]]\naddress = "10.0.0.1"\nport = 8080\n').services[0]
        self.assertEqual(service.reals[0].dest_key, DestKey.of("10.0.0.1", 8080))

    def test_fwmark_keys_on_an_address_service(self):
        self.assertProblems(
            WEB + 'fwmark = 3\nfamily = "inet"\n[service.mark]\ndestination = "192.0.2.1"\n',
            [
                'service[0].fwmark: only for protocol "fwmark"',
                'service[0].family: only for protocol "fwmark"',
                'service[0].mark: only for protocol "fwmark"',
            ],
        )

    def test_address_keys_on_a_fwmark_service(self):
        self.assertProblems(
            SHOP + 'address = "192.0.2.1"\nport = 80\n',
            [
                "service[0].address: only for tcp, udp and sctp services; a fwmark service has its mark",
                "service[0].port: only for tcp, udp and sctp services; a fwmark service has its mark",
            ],
        )

    def test_mark_rule(self):
        service = self.load(
            SHOP + '[service.mark]\ndestination = "192.0.2.0/28"\nprotocol = "udp"\n'
        ).services[0]
        self.assertEqual(service.mark, MarkRule(ipaddress.ip_network("192.0.2.0/28"), "udp", ()))

    def test_mark_rule_problems(self):
        self.assertProblems(
            SHOP
            + '[service.mark]\ndestination = "fd00::1"\nprotocol = "icmp"\nports = '
            + str(list(range(1, 17)))
            + "\n",
            [
                "service[0].mark.destination: fd00::1/128 is not IPv4",
                'service[0].mark.protocol: must be one of tcp, udp, sctp; got "icmp"',
                "service[0].mark.ports: at most 15 ports (the iptables multiport match's limit), got 16",
            ],
        )

    def test_mark_requires_a_destination(self):
        self.assertProblems(
            SHOP + "[service.mark]\nports = [80]\n", ["service[0].mark.destination: is required"]
        )

    def test_a_mark_rule_without_python_iptables_is_refused_naming_the_extra(self):
        self.patch(config_module, "iptables_installed", lambda: False)
        self.assertProblems(
            SHOP + '[service.mark]\ndestination = "192.0.2.1"\n',
            ["service[0].mark: needs python-iptables, which is not installed: lvsfeedback[fwmark]"],
        )

    def test_a_fwmark_service_without_a_mark_rule_needs_no_python_iptables(self):
        self.patch(config_module, "iptables_installed", lambda: False)
        self.assertProblems(SHOP, [])


class DuplicateTests(ConfigFileTestCase):
    def test_duplicate_service_name(self):
        self.assertProblems(
            WEB + WEB.replace("80", "443"), ['service[1].name: duplicate service name "web", also service[0]']
        )

    def test_duplicate_virtual_service(self):
        self.assertProblems(
            WEB + WEB.replace('"web"', '"www"'),
            ["service[1]: duplicate virtual service TCP 192.0.2.10:80, also service[0]"],
        )

    def test_same_mark_in_two_families_is_two_services(self):
        config = self.load(SHOP + SHOP.replace('"shop"', '"shop6"') + 'family = "inet6"\n')
        self.assertEqual(len(config.services), 2)

    def test_duplicate_real_server_spelt_differently(self):
        self.assertProblems(
            WEB.replace("192.0.2.10", "2001:db8::10")
            + '[[service.real]]\naddress = "fd00::1"\n[[service.real]]\naddress = "fd00:0::0001"\n',
            ["service[0].real[1]: duplicate real server [fd00::1]:80, also service[0].real[0]"],
        )

"""
The [pair] table of director.toml (lvsfeedback.director.config): a director
of a VRRP pair, its state file and the peer it follows while BACKUP.
"""

from __future__ import annotations

from pathlib import Path

from lvsfeedback.director.config import check_config, load_config
from tests.helpers.config import ConfigFileTestCase

PAIR = """
[director]
update_interval = 0.5

[pair]
vrrp_state_file = "run/vrrp-VI_1"
peer = "http://10.0.0.2:9101"
"""


class PairConfigTests(ConfigFileTestCase):
    def test_without_a_pair_table_the_director_is_alone(self):
        self.assertIsNone(self.load("").pair)

    def test_the_state_file_is_relative_to_the_config_and_need_not_exist(self):
        path = self.write(PAIR)
        pair = load_config(path).pair
        self.assertEqual(pair.vrrp_state_file, path.parent / "run" / "vrrp-VI_1")
        self.assertFalse(pair.vrrp_state_file.exists())
        self.assertEqual(pair.peer, "http://10.0.0.2:9101")

    def test_defaults_timeout_one_second_and_stale_after_three_update_intervals(self):
        pair = self.load(PAIR).pair
        self.assertEqual((pair.peer_timeout, pair.follow_stale_after), (1.0, 1.5))
        self.assertIsNone(pair.peer_token_file)
        self.assertIsNone(pair.peer_token)

    def test_settings_are_read(self):
        pair = self.load(PAIR + "peer_timeout = 0.25\nfollow_stale_after = 9\n").pair
        self.assertEqual((pair.peer_timeout, pair.follow_stale_after), (0.25, 9.0))

    def test_the_peer_token_is_read_with_the_file_and_never_shown(self):
        path = self.write(PAIR + 'peer_token_file = "peer.token"\n')
        (path.parent / "peer.token").write_text("t0ken\n")
        pair = load_config(path).pair
        self.assertEqual(pair.peer_token_file, path.parent / "peer.token")
        self.assertEqual(pair.peer_token, b"t0ken")
        self.assertNotIn("t0ken", repr(pair))

    def test_a_trailing_slash_of_the_peer_is_dropped(self):
        self.assertEqual(self.load(PAIR.replace(':9101"', ':9101/"')).pair.peer, "http://10.0.0.2:9101")

    def test_state_file_and_peer_are_required(self):
        self.assertProblems("[pair]\n", ["pair.vrrp_state_file: is required", "pair.peer: is required"])

    def test_unknown_key_is_refused(self):
        self.assertProblems(
            PAIR + "peer_tokenfile = 'x'\n", ['pair.peer_tokenfile: unknown key; did you mean "peer_token_file"?']
        )

    def test_a_peer_that_is_not_a_status_listener_url_is_refused(self):
        for peer in ("10.0.0.2:9101", "ftp://10.0.0.2", "http://10.0.0.2:9101/status.json", "http://:80",
                     "http://10.0.0.2:99999"):
            shown = f'"{peer}"'
            self.assertProblems(
                PAIR.replace('"http://10.0.0.2:9101"', shown),
                [f'pair.peer: must be a status listener\'s URL such as "http://10.0.0.2:9101", got {shown}'],
            )

    def test_a_peer_that_is_not_a_string_is_refused(self):
        self.assertProblems(PAIR.replace('"http://10.0.0.2:9101"', "9101"), ["pair.peer: must be a string, got 9101"])

    def test_bad_numbers_and_an_unreadable_token_are_refused(self):
        path = self.write(PAIR + 'peer_timeout = 0\nfollow_stale_after = -1\npeer_token_file = "missing"\n')
        self.assertEqual(check_config(path), [
            f"{path}: pair.peer_token_file: cannot read {path.parent / 'missing'}: No such file or directory",
            f"{path}: pair.peer_timeout: must be a number of seconds > 0 and <= 60, got 0",
            f"{path}: pair.follow_stale_after: must be a number of seconds > 0, got -1",
        ])

    def test_the_guard_file_is_beside_the_state_file_unless_set_and_rounds_every_half_second(self):
        path = self.write(PAIR)
        pair = load_config(path).pair
        self.assertEqual((pair.guard_file, pair.guard_interval), (path.parent / "run" / "pair-guard", 0.5))
        pair = self.load(PAIR + 'guard_file = "/run/keepalived/guard"\nguard_interval = 2\n').pair
        self.assertEqual((pair.guard_file, pair.guard_interval), (Path("/run/keepalived/guard"), 2.0))

    def test_the_guard_s_fetch_is_bounded_by_guard_interval_unless_guard_timeout_is_set(self):
        self.assertEqual(self.load(PAIR + "guard_interval = 0.3\n").pair.guard_timeout, 0.3)
        self.assertEqual(self.load(PAIR + "guard_timeout = 0.2\n").pair.guard_timeout, 0.2)
        for timeout in ("0", "61", '"1"'):
            [problem] = check_config(self.write(PAIR + f"guard_timeout = {timeout}\n"))
            self.assertIn("pair.guard_timeout: must be a number of seconds > 0 and <= 60", problem)

    def test_a_guard_file_that_is_the_state_file_or_a_bad_interval_is_refused(self):
        self.assertProblems(PAIR + 'guard_file = "run/vrrp-VI_1"\n',
                            ["pair.guard_file: must not be the vrrp_state_file: each has its own writer"])
        for interval in ("0.05", "61", '"1"'):
            [problem] = check_config(self.write(PAIR + f"guard_interval = {interval}\n"))
            self.assertIn("pair.guard_interval: must be a number of seconds >= 0.1 and <= 60", problem)

    def test_an_empty_state_file_name_is_refused(self):
        self.assertProblems(
            PAIR.replace('"run/vrrp-VI_1"', '""'), ['pair.vrrp_state_file: must be a non-empty string, got ""']
        )

    def test_pair_must_be_a_table(self):
        self.assertProblems('pair = "yes"\n', ['pair: must be a table ([pair]), got "yes"'])


class SamplePairTests(ConfigFileTestCase):
    def test_the_samples_commented_pair_table_loads_when_uncommented(self):
        sample = (Path(__file__).parents[2] / "tap" / "director.toml").read_text()
        start = sample.index("# [pair]")
        block = []
        for line in sample[start:].splitlines():
            if not line.startswith("#"):
                break
            block.append(line)
        text = "\n".join(line.removeprefix("# ") for line in block if not line.startswith("##"))
        path = self.write(text)
        (path.parent / "status.token").write_text("t0ken\n")
        pair = load_config(path).pair
        self.assertEqual(pair.peer, "http://10.0.0.2:9101")
        self.assertEqual(pair.vrrp_state_file, Path("/run/lvsfeedback/vrrp-VI_LVS"))
        # Where tap/keepalived-pair.conf's track_file reads the split-brain guard's verdict.
        self.assertEqual(pair.guard_file, Path("/run/lvsfeedback/pair-guard"))

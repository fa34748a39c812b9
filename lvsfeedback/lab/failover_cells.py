"""
The failover scenario's cells (issue #17), in the pair's lab
(L{lvsfeedback.lab.pair.DirectorPair}: two directors in DR on the clients'
segment, keepalived VRRP moving the VIP, its IPVS sync daemon on), with the
experiment's load, calibration and report (L{lvsfeedback.lab.experiment}).

One cell, after the experiment's own steps 1 and 2 on both directors:

- C{lvsfeedback-capacity}: C{lvs-director} on both directors with C{[pair]}
  (the backup follows the master's desired weights), every real server's
  agent reporting to both; C{wlc}: both directors' kernels given the same
  static equal weights, no agent, no lvs-director (a keepalived pair as
  operators run it);
- at half the measured time the master dies as in L{DirectorPair.kill} (its
  link down, keepalived and lvs-director SIGKILL), and this process probes
  new connections to the VIP from the client's namespace until one
  completes: the takeover time;
- after the load the dead director comes back as after a reboot, BACKUP
  (keepalived's nopreempt), so the next cell starts with a master and a
  backup again, and samples the table of whichever is master.

The figures (before, across and after the kill) are L{lvsfeedback.lab.failover}'s.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from lvsfeedback.lab import failover, report
from lvsfeedback.lab.experiment import (
    FEEDBACK_READY_TIMEOUT,
    SAMPLE_INTERVAL,
    STARTUP_TIMEOUT,
    ExperimentError,
    ForkedProcess,
    Lab,
    Plan,
    cell_load,
    hog,
    http_get_json,
    network_namespace,
    read_cpu_times,
    sample_cluster,
    twistd,
)
from lvsfeedback.lab.hog import READY_MARKER as HOG_READY
from lvsfeedback.lab.pair import DirectorPair, PairDirector
from lvsfeedback.lab.scenarios import (
    DR_SITE,
    SCENARIOS,
    SERVICE_PORT,
    STATUS_PORT,
    Scenario,
    Scheduler,
    agent_arguments,
    director_config,
    ipvsadm_restore,
    static_weights,
)
from lvsfeedback.lab.topology import DIRECTOR_SEGMENT_ADDRESSES, NAMESPACE_LINK, VIP, Command, run_command

# How long the probe tries new connections after the kill before it says "never".
TAKEOVER_TIMEOUT = 30.0
# Leftover connection entries leave by their timeouts: IPVS's FIN_WAIT is 120 s.
SOUND_TIMEOUT = 150.0


class PairLab(Lab):
    """The experiment's lab with a pair of directors: samples come from the master's table."""

    site = DR_SITE

    def __init__(self, pair: DirectorPair, plan: Plan, out: Path, say: Callable[[str], None]):
        super().__init__(pair.lab, plan, out, say)
        self.pair = pair
        self.master = pair.directors[0]

    @classmethod
    @contextmanager
    def build(cls, plan: Plan, out: Path, say: Callable[[str], None]) -> Iterator[PairLab]:
        """The pair's lab, keepalived running on both directors and one of them master; removed at the end."""
        servers = max(SCENARIOS[name].servers for name in plan.scenarios if SCENARIOS[name].pair)
        # On the machine's own disk, not in `out` (a shared folder in the VM):
        # keepalived runs the notify hook only from a file only root may change.
        log_dir = Path(tempfile.mkdtemp(prefix="lvsfeedback-pair-"))
        try:
            # Without the split-brain guard, as the static pair runs and as the
            # scenario was first measured: the guard delays a takeover by up
            # to guard_interval + guard_timeout (README "Running a pair").
            with DirectorPair(servers, sync=True, guard=False, log_dir=log_dir) as pair:
                for director in pair.directors:
                    pair.start_keepalived(director)
                lab = cls(pair, plan, out, say)
                lab.master = pair.wait_for_master(STARTUP_TIMEOUT)
                yield lab
        finally:
            # keepalived's and the directors' files, to read after the run.
            shutil.copytree(log_dir, out / "logs" / "pair", dirs_exist_ok=True)
            shutil.rmtree(log_dir, ignore_errors=True)

    def sampled_director(self) -> str:
        return self.master.namespace

    def steady(self) -> PairDirector:
        """
        The master, once the pair is sound to measure from (L{pair_problems}:
        one master, the other standing by, the sync daemons as keepalived
        runs them, no connection entry left that would carry a new connection
        past the weights on the master); ExperimentError saying why when it is not so in
        SOUND_TIMEOUT: a cell measured from an unsound pair measures the
        leftovers of the last one.
        """
        self.master = self.pair.wait_for_master(STARTUP_TIMEOUT)
        deadline = time.monotonic() + SOUND_TIMEOUT
        while problems := self.pair.problems():
            if time.monotonic() > deadline:
                raise ExperimentError("the pair is not sound to measure from, refusing: " + "; ".join(problems))
            time.sleep(1.0)
        return self.master

    def kill_master(self, daemons: PairDaemons | None) -> float:
        """The master dies (L{DirectorPair.kill}, then its lvs-director); the other is sampled from now on."""
        dead = self.master
        killed_at = self.pair.kill(dead)
        if daemons is not None:
            daemons.directors[dead.number].kill()
        self.master = self.pair.other(dead)
        return killed_at

    def first_connection(self, since: float) -> float | None:
        """Seconds from `since` until a new connection to the VIP completes from the client; None: not in time."""
        while time.monotonic() < since + TAKEOVER_TIMEOUT:
            attempt = time.monotonic()
            with network_namespace(self.topology.client):
                probe = socket.socket()
            with probe:
                probe.settimeout(failover.PROBE_ATTEMPT)
                try:
                    probe.connect((VIP, SERVICE_PORT))
                    return time.monotonic() - since
                except OSError:
                    pass
            # A refusal comes at once: wait out the attempt rather than spin.
            time.sleep(max(0.0, attempt + failover.PROBE_ATTEMPT - time.monotonic()))
        return None

    def revive(self, dead: PairDirector) -> None:
        """
        The dead director back as after a reboot (the VIP its keepalived left
        gone, and its kernel's sync daemons, its link up), keepalived only:
        each cell starts its own lvs-director. Waits until the pair is sound.
        """
        if self.pair.holds_vip(dead):
            run_command(Command(["ip", "-n", dead.namespace, "addr", "del", f"{VIP}/32", "dev", NAMESPACE_LINK]))
        self.pair.stop_sync_daemons(dead)
        run_command(Command(["ip", "-n", self.pair.lab.plan.segment, "link", "set", dead.segment_port, "up"]))
        self.pair.start_keepalived(dead)
        self.steady()


class PairDaemons:
    """lvs-director with [pair] on both directors and one lvs-agent per real server reporting to both, for one cell."""

    def __init__(self, lab: PairLab, scheduler: Scheduler, scenario: Scenario):
        self.lab = lab
        pair = lab.pair
        assert pair.lab.log_dir is not None
        token = pair.lab.log_dir / "status.token"
        self.directors: dict[int, ForkedProcess] = {}
        for director in pair.directors:
            peer = pair.other(director)
            config = lab.out / f"director{director.number}.toml"
            config.write_text(director_config(
                VIP, director.address, scheduler, scenario.servers, lab.plan.feedback, DR_SITE,
                pair={"vrrp_state_file": str(director.state_file), "peer": f"http://{peer.address}:{STATUS_PORT}",
                      "peer_token_file": str(token)},
                token_file=str(token)))
            self.directors[director.number] = lab.fork(
                f"lvs-director{director.number}", twistd(["lvs-director", "--config", str(config)]),
                namespace=director.namespace)
        for process in self.directors.values():
            process.wait_for_log("status listener on", STARTUP_TIMEOUT)
        # Beside their servers, not in their cgroups, as in the experiment's other cells.
        self.agents = [lab.fork(f"lvs-agent-{server.name}", twistd([
            "lvs-agent", *agent_arguments(DIRECTOR_SEGMENT_ADDRESSES, str(server.cgroup.path), DR_SITE)]),
            namespace=server.namespace) for server in lab.servers(scenario)]

    def status(self, director: PairDirector) -> dict:
        return http_get_json(director.namespace, STATUS_PORT, "/status.json")

    def wait_until_feeding_back(self, timeout: float = FEEDBACK_READY_TIMEOUT) -> None:
        """Until both directors have every real server's report and none is in slow start any more."""
        deadline = time.monotonic() + timeout
        for director in self.lab.pair.directors:
            while True:
                try:
                    servers = self.status(director)["services"][0]["servers"]
                    if all(s["health"] is not None and s["reason"] not in (None, "slow-start", "static")
                           for s in servers):
                        break
                    state = ", ".join(f"{s['server']} {s['reason']}" for s in servers)
                except (OSError, ExperimentError, KeyError, IndexError, ValueError) as error:
                    state = str(error)
                if time.monotonic() > deadline:
                    raise ExperimentError(f"{director.namespace}'s director did not start feeding back in "
                                          f"{timeout:g} s ({state}):\n{self.directors[director.number].log_tail()}")
                time.sleep(1.0)

    def stop(self) -> None:
        for process in [*self.agents, *self.directors.values()]:
            process.stop()


def run_pair_cell(lab: Lab, scenario: Scenario, scheduler: Scheduler, pattern: str, repeat: int,
                  cost: float) -> dict:
    """One failover cell, from a clean IPVS table on both directors to its result document."""
    if not isinstance(lab, PairLab):
        raise ExperimentError(f"{scenario.name} runs in the pair's lab")
    plan = lab.plan
    servers = lab.servers(scenario)
    names = [server.name for server in servers]
    addresses = lab.addresses(servers)
    measure = scenario.measured(plan.measure, plan.ramp_step)
    lab.set_quotas(scenario.quotas)
    config = cell_load(plan, scenario, pattern, cost)
    cell_name = f"{scenario.name}-{pattern}-{scheduler.name}-{repeat}"
    extras: list[ForkedProcess] = []
    events: list[dict] = []
    daemons: PairDaemons | None = None
    weights = None
    dead: PairDirector | None = None
    killed = takeover = None
    try:
        lab.steady()
        if scenario.hog_server is not None:
            extras.append(lab.fork("hog", hog(scenario.hog_workers), cgroup=servers[scenario.hog_server].cgroup))
            extras[-1].wait_for_log(HOG_READY, STARTUP_TIMEOUT)
        lab.restore_ipvs("-C\n")
        if scheduler.feedback:
            daemons = PairDaemons(lab, scheduler, scenario)
            daemons.wait_until_feeding_back()
            if not scheduler.cold:
                lab.say(f"    the directors run {plan.preroll:g} s before the load (warm start)")
                time.sleep(plan.preroll)
        else:
            weights = static_weights(scheduler, scenario, cost)
            lab.restore_ipvs(ipvsadm_restore(VIP, scheduler.ipvs_scheduler, weights, DR_SITE))
        timeline = scenario.events(plan.warmup, measure, scheduler.feedback)
        if [event.kind for event in timeline] != ["director-kill"]:
            raise ExperimentError(f"{scenario.name}: the pair's lab acts a director's death, nothing else")
        result_path = lab.out / "records" / f"{cell_name}.json"
        result_path.parent.mkdir(exist_ok=True)
        cpu_before = read_cpu_times()
        start_at = time.monotonic() + 1.0
        loadgen = lab.run_load(config, start_at, result_path)
        samples = []
        next_sample = start_at
        last_line = 0.0
        while loadgen.poll() is None:
            now = time.monotonic()
            if timeline and now >= start_at + timeline[0].at:
                event = timeline.pop(0)
                dead = lab.master
                killed_at = lab.kill_master(daemons)
                killed = killed_at - start_at
                takeover = lab.first_connection(killed_at)
                events.append({"time": round(killed, 3), "planned": event.at, "event": event.text})
                lab.say(f"    t={event.at:5.1f}s {event.text}: {dead.namespace} -> {lab.master.namespace}, "
                        + (f"no new connection in {TAKEOVER_TIMEOUT:g} s" if takeover is None
                           else f"a new connection through the VIP after {takeover:.2f} s"))
            if now >= next_sample:
                samples.append(sample_cluster(lab, start_at, servers, addresses))
                next_sample += SAMPLE_INTERVAL
                if sys.stdout.isatty() or now - last_line >= 15:
                    last_line = now
                    lab.progress(cell_name, now - start_at, config.duration, samples[-1], addresses)
            time.sleep(min(0.1, max(0.0, min([next_sample - time.monotonic()]
                                               + [start_at + event.at - time.monotonic() for event in timeline]))))
        cpu_after = read_cpu_times()
        lab.progress_done()
        if loadgen.status != 0:
            raise ExperimentError(f"the load generator of {cell_name} failed ({loadgen.status}):\n{loadgen.log_tail()}")
        if killed is None:
            raise ExperimentError(f"{cell_name}: the load ended before the master was killed")
        director = None
        if daemons is not None:
            status = daemons.status(lab.master)
            director = {"passes": status["passes"]["total"], "writes": status["passes"]["writes"],
                        "failed_passes": status["passes"]["failed"]}
        raw = json.loads(result_path.read_text())
    finally:
        for extra in extras:
            extra.stop()
        if daemons is not None:
            daemons.stop()
        if dead is not None:
            lab.revive(dead)
    cell = report.cell_result(
        scenario=scenario.name, scheduler=scheduler.name, pattern=pattern, repeat=repeat,
        config=asdict(config), warmup=plan.warmup, measure=measure,
        rate=scenario.mean_load(plan.load, plan.warmup, measure) * scenario.worst_capacity(cost),
        static_weights=None if weights is None else dict(zip(names, weights)),
        quotas=dict(zip(names, scenario.quotas)),
        hog_server=None if scenario.hog_server is None else names[scenario.hog_server],
        records=raw["records"], lateness=raw["lateness"], samples=samples, events=events, director=director,
        addresses=addresses,
        update_interval=plan.feedback.update_interval if scheduler.feedback else None,
        preroll=None if not scheduler.feedback else 0.0 if scheduler.cold else plan.preroll,
        cpu_times=(cpu_before, cpu_after),
    )
    records = [report.unpack_record(packed) for packed in raw["records"]]
    cell["failover"] = failover.figures(records, plan.warmup, measure, killed, takeover)
    cell["pair"] = {"advert_int": lab.pair.advert_int, "sync": lab.pair.sync}
    return cell

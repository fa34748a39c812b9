"""
Capacity mode's controller: weights that even out utilisation across the
servers with live feedback (see `capacity_weights`). Pure, like the policy
that calls it (lvsfeedback.director.policy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from lvsfeedback.director.policy_model import (
    Assessment,
    Feedback,
    PolicySettings,
    Reason,
    ServerInput,
    ServerMemory,
    clamp,
    ewma,
)
from lvsfeedback.ipvs.model import DestKey

# Capacity mode's controller, tuned on lvsfeedback.director.simulate: the
# exponent of the utilisation ratio, and the most a weight may be scaled in
# one pass.
_GAIN = 1.0
_MAX_STEP = 2.0
# A server below the mean gains at this part of the gain a cut takes when
# its traffic is counted in active connections and it holds fewer than
# `_FEW_CONNECTIONS`: a raise then lands as whole persistent connections,
# each a large lump of its load, and the raise that overshoots queues work
# on it (the persistent swing, #14; bench/persist_swing.py).
_RAISE_GAIN = 0.5
_FEW_CONNECTIONS = 10
_INTEGRAL_GAIN = 0.5
# Packets a second a server must receive for its share of the traffic to be
# counted (about a hundred packets in a smoothing window); below it, noise
# in so few packets would move the weights more than the traffic does.
_COUNTED_RATE = 20.0
# A step starts from at least this part of a server's base share, so that
# one that gets next to no traffic now still climbs back quickly.
_LEAST_SHARE = 1 / 8
# Active connections a server must hold on average for the servers' shares
# of them to be counted when packets are too few (persistent connections).
_COUNTED_CONNECTIONS = 10
# While a server's share of the traffic is off its smoothed share of the
# weights by more than this part of it, the traffic lags the weights
# (connections are renewed slowly), and the step uses the bolder gain: the
# weights lead so that renewed connections carry the traffic there sooner.
# Tuned on the sweep's seed 1, judged on seeds 2 and 3 (README).
_LAG = 0.2
_LAG_GAIN = 2.5
# A server's dead band is at least this many times the noise of its
# agent's reports: a step the noise alone would take is no step, or equal
# servers' weights wander apart on it (run N; bench/policy_drift.py).
_NOISE_BAND = 1.25
# The noise is estimated from the change between reports a pass apart
# (E|a - b| = 2 sigma / sqrt(pi) for two independent reports), averaged
# over this long a half-life, each change counted up to this many times
# the estimate so far: a real step (a hog starting) is one bounded sample,
# not a wider band just when the weights must move.
_NOISE_HALF_LIFE = 30.0
_NOISE_CLIP = 3.0
# A server whose utilisation reads at least `_SATURATED` though its smoothed
# share of the weights is no more than its base share is pinned: a hog in
# its cgroup takes whatever the requests leave, so its utilisation may no
# longer answer its weight. It is left out of the mean the others are held
# to: counted, it lifts that mean above equal servers, both always gain, no
# dead band holds them, and their weights swing apart on the lag of
# persistent connections (run O, bench/hog_drift.py). It is itself still
# held to the mean of all, so it loses as before (a small server saturated
# at its base share, overloaded rather than hogged, is cut no harder). One
# saturated on more than its base share counts: the others take its excess.
_SATURATED = 0.95


@dataclass(frozen=True)
class Control:
    """What capacity mode remembers of one server after a pass."""

    target: float
    share: float | None
    share_at: float | None
    capacity: float | None
    reported: float | None
    noise: float | None


def capacity_weights(
    servers: Mapping[DestKey, ServerInput],
    feedback: Mapping[DestKey, Feedback],
    previous: Mapping[DestKey, ServerMemory | None],
    settings: PolicySettings,
    now: float,
) -> tuple[dict[DestKey, Assessment], dict[DestKey, Control]]:
    """
    Weights that bring every server to the same utilisation, which puts each
    server's share in proportion to its capacity (the aim of Cloudflare's
    Unimog). A server's new weight is the share of the traffic it has had,
    times (mean utilisation / its utilisation) ** gain, within [1/step,
    step]. The share of the traffic is counted in the kernel's packets when
    every server gets enough of them to count (smoothed like health, so
    that it and the utilisation it caused lag alike and the step lands where
    it aims rather than ringing); else in the kernel's active connections
    when there are enough of them (persistent connections at low rates);
    else it is the smoothed share of the kernel's weights it has had. The
    traffic, not the weights, is what the step starts from because
    persistent connections follow new weights only as they are renewed; and
    while the traffic lags the weights by more than `_LAG`, the gain is
    `_LAG_GAIN`, not 1: the weights lead the slow traffic, and fall back as
    it catches up. A server within `dead_band` of the mean keeps its
    weight. The mean leaves out servers pinned at saturation (`_SATURATED`)
    but for their own step. The weights are then scaled to add up to the
    base weights (no drift).

    The traffic sets where a step starts, never how big it is, and a step
    starts from at least an eighth of the server's base share: a server
    below the mean always gains, however little it gets now, so none can be
    starved (the trap of dividing its traffic by its utilisation, #14); one
    above it always loses. While a server ramps up, its utilisation shows
    the ramp, not its weight: it may lose then, never gain.

    A server new to the controller starts at the weight the kernel gives it
    (a director restart: what the traffic already taught stands), else,
    when its agent reports its capacity, at the prior (`_priors`), else at
    its base weight. One whose weight this director followed from the
    master until now (a VRRP takeover) starts at that weight, and when all
    do, nothing rescales them. When a server's reported capacity changes,
    its target scales by new / old at once: a quota change is known before
    the traffic shows it.
    """
    utilisations = {dest: max(1 - health.smoothed / 100, settings.min_utilisation) for dest, health in feedback.items()}
    reported = {dest: reported_utilisation(health.latest, settings) for dest, health in feedback.items()}
    rates = {dest: health.packet_rate for dest, health in feedback.items()}
    rate_total = sum(rate or 0 for rate in rates.values())
    # Where the traffic really goes: with persistent connections it follows
    # new weights only as connections are renewed, so a step taken from the
    # weights' shares would be taken again and again before it shows.
    in_packets = all(rate is not None and rate >= _COUNTED_RATE for rate in rates.values())
    # Each server's active connections, where the traffic is counted in them.
    connections = {} if in_packets else _counted_connections(servers, feedback)
    connection_total = sum(connections.values())
    traffic = (
        {dest: rate / rate_total for dest, rate in rates.items() if rate is not None}
        if in_packets
        else {dest: count / connection_total for dest, count in connections.items()}
    )
    base_total = sum(servers[dest].base_weight for dest in feedback)
    kernel_total = sum(servers[dest].current_weight or 0 for dest in feedback)
    shares = {
        dest: _smoothed_share(
            previous[dest] or ServerMemory(),
            (servers[dest].current_weight or 0) / kernel_total if kernel_total else None, settings, now,
        )
        for dest in feedback
    }
    pinned = {
        dest for dest, utilisation in utilisations.items()
        if _pinned(utilisation, shares[dest][0], servers[dest].base_weight / base_total)
    }
    answering = [utilisation for dest, utilisation in utilisations.items() if dest not in pinned]
    overall = sum(utilisations.values()) / len(utilisations)
    answering_mean = sum(answering) / len(answering) if answering else overall
    raw: dict[DestKey, float] = {}
    details: dict[DestKey, str] = {}
    capacities: dict[DestKey, float | None] = {}  # what the controller remembers: the latest known
    noises: dict[DestKey, float | None] = {}
    priors: list[DestKey] = []  # new, with a capacity: weighed once the others are
    resumed: list[DestKey] = []  # at the master's weight, followed until now
    for dest, utilisation in utilisations.items():
        memory = previous[dest] or ServerMemory()
        server = servers[dest]
        share = shares[dest]
        capacities[dest] = server.capacity or memory.capacity
        noises[dest] = _noise(memory, reported[dest], settings, now)
        if memory.followed and memory.target is not None:
            # The master's weight, followed until this pass (a takeover): kept.
            raw[dest] = memory.target
            resumed.append(dest)
            details[dest] = "from the master's weight it followed"
            continue
        if memory.target is None or share[0] is None:
            adopted = previous[dest] is None and (server.current_weight or 0) > 0
            if adopted:
                raw[dest] = float(server.current_weight or 0)
                details[dest] = "new: the kernel's weight"
            elif server.capacity:
                priors.append(dest)
            else:
                raw[dest] = float(server.base_weight)
                details[dest] = "new: base weight"
            continue
        if server.capacity and memory.capacity and server.capacity != memory.capacity:
            rescale = server.capacity / memory.capacity
            raw[dest] = memory.target * rescale
            details[dest] = f"capacity {memory.capacity:.2f} -> {server.capacity:.2f} CPUs: x{rescale:.2f}"
            continue
        mean = overall if dest in pinned else answering_mean
        comparison = f"utilisation {utilisation:.2f} vs mean {mean:.2f}"
        lagging = abs(traffic.get(dest, share[0]) - share[0]) > _LAG * share[0]
        lumpy = dest in connections and connections[dest] < _FEW_CONNECTIONS
        gain = (_LAG_GAIN if lagging else _GAIN) * (_RAISE_GAIN if utilisation < mean and lumpy else 1.0)
        factor = min(max((mean / utilisation) ** gain, 1 / _MAX_STEP), _MAX_STEP)
        ramping = memory.ramp_start is not None and now - memory.ramp_start < settings.slow_start
        band = max(settings.dead_band, _NOISE_BAND * (noises[dest] or 0.0))
        if abs(utilisation - mean) <= band:
            raw[dest] = memory.target
            details[dest] = f"{comparison}: balanced" + (
                f" (within its reports' noise, +-{band:.2f})" if band > settings.dead_band else "")
        elif ramping and factor > 1:
            raw[dest] = memory.target
            details[dest] = f"{comparison}: slow start, held"
        else:
            start = traffic.get(dest, share[0])
            if factor < 1 and reported[dest] >= _SATURATED and kernel_total:
                # Saturated, its connections queue and live longer, so their
                # share grows whatever its weight: a cut from that share
                # would never go below half of it. It is cut from its weight.
                start = min(start, (server.current_weight or 0) / kernel_total)
            anchor = max(start, _LEAST_SHARE * server.base_weight / base_total)
            raw[dest] = anchor * base_total * factor
            current = server.current_weight
            if current and abs(raw[dest] - current) < settings.hysteresis * current:
                # A step hysteresis would not write, most often because idle
                # floors make the ratio understate it: keep integrating from
                # the last target until the step is big enough to be written.
                raw[dest] = memory.target * factor ** _INTEGRAL_GAIN
            details[dest] = f"{comparison}: x{factor:.2f}" + (", traffic lagging the weights" if lagging else "")
    if priors:
        _priors(priors, servers, feedback, raw, details)
    # The master's weights add up as it scaled them: scaled again, their
    # rounding would move them at the takeover.
    scale = 1.0 if len(resumed) == len(raw) else base_total / sum(raw.values())
    targets = {dest: min(max(weight * scale, settings.floor), settings.ceiling) for dest, weight in raw.items()}
    weights = {
        dest: Assessment(clamp(target, settings), Reason.CAPACITY, details[dest], rampable=True)
        for dest, target in targets.items()
    }
    return weights, {
        dest: Control(target, *shares[dest], capacities[dest], reported[dest], noises[dest])
        for dest, target in targets.items()
    }


def _pinned(utilisation: float, share: float | None, base_share: float) -> bool:
    """Saturated on no more than its base share of the weights: a utilisation that may not answer the weight."""
    return utilisation >= _SATURATED and share is not None and share <= base_share


def _counted_connections(servers: Mapping[DestKey, ServerInput], feedback: Mapping[DestKey, Feedback]) -> dict[DestKey, int]:
    """
    Each server's active connections in the kernel, when they are enough to
    count its share of the traffic in: where persistent connections are,
    but too few packets. Empty when they are not.
    """
    counts = {dest: counters.active_connections for dest in feedback if (counters := servers[dest].counters) is not None}
    if len(counts) < len(feedback) or sum(counts.values()) < _COUNTED_CONNECTIONS * len(counts):
        return {}
    return counts


def _priors(
    priors: list[DestKey],
    servers: Mapping[DestKey, ServerInput],
    feedback: Mapping[DestKey, Feedback],
    raw: dict[DestKey, float],
    details: dict[DestKey, str],
) -> None:
    """
    The weights servers new to the controller start from, before traffic
    corrects them: base weight x spare capacity / the capacity that earns a
    base weight, spare capacity = reported CPUs x smoothed health / 100. So
    an idle but hogged server starts below its idle peers, a 1:2:4 cluster
    at 1:2:4, and a server with that capacity and full health at its base
    weight.

    The capacity that earns a base weight is the (base-weighted) mean
    capacity of the new servers; once servers already weighted in this pass
    report a capacity, it is the capacity per weight they have now, so a
    server that reports after them lands in proportion to them. Capacity,
    not spare capacity: loaded servers have little spare, and measured
    against that an idle newcomer would look enormous.
    """
    # Every server weighed here has a capacity: `or 0.0` only tells the type checker.
    capacity = {dest: servers[dest].capacity or 0.0 for dest in (*raw, *priors)}
    weighed = [dest for dest in raw if capacity[dest]]
    if weighed:
        mean = sum(servers[dest].base_weight * capacity[dest] for dest in weighed) / sum(
            raw[dest] for dest in weighed
        )
    else:
        mean = sum(servers[dest].base_weight * capacity[dest] for dest in priors) / sum(
            servers[dest].base_weight for dest in priors
        )
    for dest in priors:
        server, health = servers[dest], feedback[dest].smoothed
        raw[dest] = server.base_weight * capacity[dest] * health / 100 / mean
        details[dest] = f"prior: {server.capacity:.2f} CPUs x health {health:.0f} of mean {mean:.2f}"


def _smoothed_share(
    memory: ServerMemory, share: float | None, settings: PolicySettings, now: float
) -> tuple[float | None, float | None]:
    """The kernel share folded into its EWMA once per pass: (smoothed share, when)."""
    if share is None:
        return None, None
    if memory.share_at is None or now <= memory.share_at:
        return share, now
    return ewma(memory.share, share, now - memory.share_at, settings), now


def reported_utilisation(health: int, settings: PolicySettings) -> float:
    """The utilisation one report gives, before smoothing."""
    return max(1 - health / 100, settings.min_utilisation)


def followed_noise(memory: ServerMemory, health: int, settings: PolicySettings, now: float) -> tuple[float, float | None]:
    """
    A VRRP backup's view of a server's report noise while it follows the
    master's weight: the report's utilisation and the noise folded in as a
    pass of its own would, so that after a takeover the dead band is the
    one the master had rather than `dead_band` again for a minute.
    """
    reported = reported_utilisation(health, settings)
    return reported, _noise(memory, reported, settings, now)


def _noise(memory: ServerMemory, reported: float, settings: PolicySettings, now: float) -> float | None:
    """
    The noise of a server's reports, from the change since the report of the
    last pass (clipped, `_NOISE_CLIP`), averaged over `_NOISE_HALF_LIFE`
    from 0: it grows to the reports' noise within a minute or two.
    """
    if memory.reported is None or memory.share_at is None or now <= memory.share_at:
        return memory.noise
    noise = memory.noise or 0.0  # from nothing: a first change may be a step
    change = min(abs(reported - memory.reported) * math.sqrt(math.pi) / 2,
                 _NOISE_CLIP * max(noise, settings.dead_band))
    alpha = 1 - 2 ** (-(now - memory.share_at) / _NOISE_HALF_LIFE)
    return noise + alpha * (change - noise)

"""
The director's status listener: what it knows, for people and for
Prometheus, and the few knobs an operator may turn.

    GET  /                  the dashboard (files shipped in this package, no CDN)
    GET  /status.json       services, real servers, weights and why, agents, passes, NECP counts
    GET  /history.json      weights and health of the last minutes, for the charts
    GET  /metrics           Prometheus exposition, read from the live objects
    POST /control/drain     {"service": ..., "server": ...}: weight 0 until undrained
    POST /control/undrain   {"service": ..., "server": ...}: back to feedback
    POST /control/pin       {"service": ..., "server": ..., "weight": N}: a fixed weight

Everything here reads the director's live objects at request time (config,
registry, the updater's last pass), so there is nothing to keep in sync.
The status builder, the metrics collector and the control panel are plain
objects; the resources only translate HTTP to and from them.

Control is allowed without a token only on a listener bound to loopback;
with `[status] token_file` set, every control request needs its bearer token.
A listener reachable from the network without a token file is read-only.
A request body is judged on its headers before it is read (L{StatusRequest}):
only a sender allowed control may send one, of at most MAX_BODY bytes.
"""

"""
The director's status listener: what it knows, for people and for
Prometheus, and the few knobs an operator may turn.

    GET  /                  the dashboard (files shipped in this package, no CDN)
    GET  /status.json       services, real servers, weights and why, agents, passes, NECP counts
    GET  /history.json      weights and health of the last minutes, for the charts
    GET  /metrics           Prometheus exposition of the status
    POST /control/drain     {"service": ..., "server": ...}: weight 0 until undrained
    POST /control/undrain   {"service": ..., "server": ...}: back to feedback
    POST /control/pin       {"service": ..., "server": ..., "weight": N}: a fixed weight
    GET  /pair/desired.json the last pass's desired weights, for a VRRP backup to follow
    GET  /pair/addresses.json the addresses this host holds, for the peer's split-brain guard

What the director decided is read from one place: the updater's last
L{PassResult} (members, the facts each decision used, desired and kernel
weights), never recomputed here nor mixed with newer facts, so nothing
needs to be kept in sync. Control goes through the updater's
set_override and clear_override. The status builder (status), the history
(history), the metrics collector (prometheus) and the control panel and
its access rules (control) are plain objects; the resources (resources)
only translate HTTP to and from them, and the listener (listener) judges
requests on their headers and runs as the director's child service.

Control is allowed without a token only on a listener bound to loopback;
with `[status] token_file` set, every control request needs its bearer token.
A listener reachable from the network without a token file is read-only.
The /pair/ documents are allowed as control is (the same ControlAccess).
A request body is judged on its headers before it is read (L{StatusRequest}):
only a sender allowed control may send one, of at most MAX_BODY bytes.
"""

"""The charts' history: weights and health of the last minutes."""

from __future__ import annotations

from collections import deque
from typing import Any

from lvsfeedback.director.updater import PassResult
from lvsfeedback.director.web.status import seconds
from lvsfeedback.ipvs.model import DestKey

# The dashboard charts this much of the past, from a sample after every pass.
HISTORY_WINDOW = 300.0


class History:
    """
    Every real server's weights and health over the last `window` seconds,
    sampled from each pass's result by the status listener, so that the
    dashboard opens on the recent past instead of an empty chart.

    Kept compact, for 150 samples of 10,000 servers would otherwise take
    about 240 MB: per sample and service, the servers' names (one tuple,
    shared with the sample before while they stay the same) and their
    figures in one flat tuple; the names themselves are built once.
    """

    FIELDS = ("kernel_weight", "desired_weight", "health")

    def __init__(self, window: float = HISTORY_WINDOW):
        self.window = window
        # (time, {service name: (server names, figures: len(FIELDS) per server)})
        self._samples: deque[tuple[float, dict[str, tuple[tuple[str, ...], tuple]]]] = deque()
        self._names: dict[DestKey, str] = {}

    def record(self, result: PassResult) -> None:
        """
        Keep one sample of a pass, at its time: each server's kernel weight,
        desired weight and health as the status has them, taken alone (the
        whole status is ten times the work, every two seconds).
        """
        now = seconds(result.time)
        known, names = self._names, {}
        before = self._samples[-1][1] if self._samples else {}
        services = {}
        for service_pass in result.services.values():
            decided = service_pass.decision.servers if service_pass.decision is not None else {}
            inputs, written = service_pass.inputs, service_pass.written
            figures = []
            for dest in service_pass.members:
                decision = decided.get(dest)
                report = inputs[dest].report
                figures += (
                    written.get(dest),
                    None if decision is None else decision.weight,
                    None if report is None else report.value,
                )
                names[dest] = known.get(dest) or str(dest)
            server_names = tuple([names[dest] for dest in service_pass.members])
            name = service_pass.service.name
            previous = before.get(name)
            if previous is not None and previous[0] == server_names:
                server_names = previous[0]
            services[name] = (server_names, tuple(figures))
        # Only the names of servers sampled now: a departed server's goes.
        self._names = names
        self._samples.append((now, services))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()

    @property
    def samples(self) -> list[dict[str, Any]]:
        """The samples as the document has them: per service, per server, the FIELDS."""
        width = len(self.FIELDS)
        return [
            {
                "time": time,
                "services": {
                    name: {server: list(figures[width * i:width * i + width]) for i, server in enumerate(servers)}
                    for name, (servers, figures) in services.items()
                },
            }
            for time, services in self._samples
        ]

    def document(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "fields": list(self.FIELDS),
            "samples": self.samples,
        }

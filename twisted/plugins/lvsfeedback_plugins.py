"""
twistd plugins for lvsfeedback.

This module is imported by every `twistd --help`, so it names modules and
imports nothing heavy: each ServiceMaker loads its tap module only when that
daemon is asked for.
"""

from twisted.application.service import ServiceMaker

lvsAgent = ServiceMaker(
    "lvsfeedback agent",
    "lvsfeedback.agent.tap",
    "Report this real server's load to LVS directors over NECP.",
    "lvs-agent",
)

lvsDirector = ServiceMaker(
    "lvsfeedback director",
    "lvsfeedback.director.tap",
    "Turn NECP agent feedback into IPVS real-server weights.",
    "lvs-director",
)

"""
The project's tests. Hypothesis runs without its timing checks here: the
suite shares two cores with the kernel VM and whatever else the machine
runs, and how fast an example is drawn or runs says nothing about whether
the code is right (speed has its benchmarks under bench/).
"""

from hypothesis import HealthCheck, settings

settings.register_profile("lvsfeedback", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lvsfeedback")

"""
linkrouter's tests. Property tests run on shared, sometimes busy CPUs (CI, developers'
machines running several suites at once): slow input generation is not a failure.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "linkrouter", deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("linkrouter")

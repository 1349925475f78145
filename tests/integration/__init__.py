"""
Integration tests: real loopback listeners and connections, C{twistd} and other
processes, the PostgreSQL server on C{127.0.0.1:5432}, real time on the real reactor:
C{python -m twisted.trial tests.integration}.
"""

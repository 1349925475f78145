"""
Unit tests: in memory (C{MemoryReactorClock}, C{Clock}, C{StringTransport},
C{RequestTraversalAgent}, C{StubTreq}; temporary files and SQLite files), no sockets, no
processes, no PostgreSQL, no waiting on the real reactor. The whole set runs in seconds:
C{python -m twisted.trial tests.unit}.
"""

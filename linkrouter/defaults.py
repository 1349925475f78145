# -*- test-case-name: tests.unit.test_config -*-
"""
The router's default values and fixed names: a leaf module (standard library only), so
low-level modules (OAuth, connections, resources) need not import the configuration.
"""

from __future__ import annotations

DIALECTS = ("anthropic", "bedrock", "vertex")
#: The seed's alternative names for each dialect in UPSTREAM_API_FORMAT.
DIALECT_ALIASES = {"messages": "anthropic", "invoke": "bedrock", "rawpredict": "vertex"}
DEFAULT_UPSTREAM = "https://api.anthropic.com"
DEFAULT_OAUTH_TOKEN_URL = "https://platform.claude.com/v1/oauth/token"  # noqa: S105
DEFAULT_OAUTH_AUTHORIZE_URL = "https://claude.ai/oauth/authorize"
#: Where the authorize page sends its code: a page that shows C{code#state} to paste.
OAUTH_REDIRECT_URI = "https://platform.claude.com/oauth/code/callback"
DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
DEFAULT_UPSTREAM_TIMEOUT = 600.0
DEFAULT_UPSTREAM_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_COOLDOWN = 5 * 3600.0
DEFAULT_REFRESH_MARGIN = 60.0
DEFAULT_TLS_PORT = 8443
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_STORE_TIMEOUT = 5.0
DEFAULT_HEADER_TIMEOUT = 20.0
DEFAULT_MAX_CONNECTIONS = 10000
LOG_FORMATS = ("text", "json")
CLAUDE_CODE_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - the seed's default: a team router listens for the team
DEFAULT_PORT = 8080
#: Listen backlog of TCP and SSL listeners unless the endpoint sets one (Twisted's default
#: of 50 makes the kernel drop handshakes under a burst of connections).
LISTEN_BACKLOG = 1024

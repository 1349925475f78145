"""twistd plugin: `twistd -n linkrouter --help` (the work lives in linkrouter.tap)."""

from twisted.application.service import ServiceMaker

linkrouter = ServiceMaker(
    "linkrouter",
    "linkrouter.tap",
    "Share Claude subscriptions across a team through router tokens (la_sk_...).",
    "linkrouter",
)

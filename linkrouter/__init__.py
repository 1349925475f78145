"""linkrouter: share Claude subscriptions across a team through router tokens."""

__version__ = "0.1.0"

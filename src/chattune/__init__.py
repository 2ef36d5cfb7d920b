"""chattune: turn a team's conversation logs into a better chatbot."""

__version__ = "0.1.0"

"""The agent's error hierarchy: third-party exceptions are mapped to these at the boundary."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class TransientError(AgentError):
    """Worth retrying: the peer may come back (Docker restarting, hub unreachable)."""


class FatalError(AgentError):
    """Retrying cannot help; the supervisor escalates instead of restarting."""


class ConfigError(FatalError):
    """Invalid configuration. Carries every problem found, so all are reported at once."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"invalid configuration: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid configuration ({len(self.problems)} problems):\n{lines}"

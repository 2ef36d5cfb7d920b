"""What happened to the data on its way in: saved as data_report.json in every run folder.

    report = DataReport(format="csv", source="chats.csv")
    report.drop("duplicate")            # report.dropped == {"duplicate": 1}
    report.change("whitespace collapsed")
    print(report.summary())
"""

from dataclasses import asdict, dataclass, field


@dataclass
class DataReport:
    format: str  # how the source was read: "csv", "messages-jsonl", "sharegpt-json", "transcript", "chitchat", ...
    source: str  # the path or corpus name as the user gave it
    conversations_read: int = 0  # conversations read from the source (after `limit`), before cleaning
    conversations: int = 0  # conversations kept after cleaning
    turns: int = 0  # turns in the kept conversations
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count, e.g. {"empty turn": 3, "duplicate": 1}
    changed: dict[str, int] = field(default_factory=dict)  # fix -> turns changed, e.g. {"whitespace collapsed": 12}
    warnings: list[str] = field(default_factory=list)  # one line each, e.g. "read as cp1252, not UTF-8"

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def change(self, what: str, count: int = 1) -> None:
        self.changed[what] = self.changed.get(what, 0) + count

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the terminal: 'chats.csv (csv): kept 9 of 10 conversations, 18 turns; dropped: duplicate 1'."""
        line = (
            f"{self.source} ({self.format}): kept {self.conversations} of {self.conversations_read} conversations, "
            f"{self.turns} turns"
        )
        if self.dropped:
            line += "; dropped: " + ", ".join(f"{reason} {count}" for reason, count in self.dropped.items())
        if self.changed:
            line += "; changed: " + ", ".join(f"{what} {count}" for what, count in self.changed.items())
        return line

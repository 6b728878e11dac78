"""The one exception of the scoring package."""


class ScoringError(ValueError):
    """Input a scorer cannot score (a missing prediction, an unparseable gold answer, a missing
    resource); the message names the item and what to do. Callers in the app turn it into their
    one-line error."""

"""The one error type of model loading: its message is one line for the user."""
from __future__ import annotations


class WeightsError(ValueError):
    """A weight file or model name that cannot be loaded; the message is one line."""

"""The application database: schema (``tables``) and table swaps (``swap``)."""

from typing import Final

#: NOTIFY channel of ``user_segments`` changes (triggers of migration 0002; the API listens).
SEGMENTS_CHANNEL: Final = "user_segments_changed"

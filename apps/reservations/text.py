"""What a name, a phone number or a reference may contain; shared by the API and the pages."""

import unicodedata

NO_CONTROL_CHARACTERS = "Control characters and text-direction overrides are not allowed."

# Explicit bidirectional formatting: marks, embeddings, overrides and isolates.
# They let a name display as something else ("Trojan Source"); no name needs them.
BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def has_control_characters(value: str) -> bool:
    """True if ``value`` holds a C0/C1 control character or a bidi formatting character."""
    return any(unicodedata.category(char) == "Cc" or char in BIDI_CONTROLS for char in value)

"""What a name, a phone number or a reference may contain; shared by the API and the pages."""

import unicodedata

NO_CONTROL_CHARACTERS = (
    "Control characters, invisible formatting and text-direction marks are not allowed."
)
NEEDS_A_LETTER = "Enter a name with at least one letter or digit."

# Invisible or layout-changing characters: controls (Cc), format characters
# such as text-direction marks and overrides (Cf; "Trojan Source"), line and
# paragraph separators (Zl, Zp), surrogates (Cs) and private use (Co).
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co"})
# Except the joiners that emoji sequences and some scripts need.
ALLOWED_FORMAT = frozenset({"\u200c", "\u200d"})


def has_control_characters(value: str) -> bool:
    """True if ``value`` holds a character of ``FORBIDDEN_CATEGORIES`` other than a joiner."""
    return any(
        unicodedata.category(char) in FORBIDDEN_CATEGORIES and char not in ALLOWED_FORMAT
        for char in value
    )


def has_a_letter_or_digit(value: str) -> bool:
    return any(char.isalnum() for char in value)

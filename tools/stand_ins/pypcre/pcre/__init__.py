"""Stand-in for PyPcre (``import pcre``), built into the course's offline GPU wheelhouse.

GPTQModel imports ``pcre`` (PyPcre: Python bindings for the PCRE2 C library) for a few regular
expressions. PyPcre ships no wheels: pip compiles it against the system's PCRE2 or a git clone of
it, which an offline GPU machine cannot do. GPTQModel uses only what Python's own ``re`` also has
(compile, escape, split, Pattern and the CASELESS/MULTILINE/DOTALL flags), so this module maps
those names onto ``re``. It is not PyPcre: its version says so (``0.6.4+course.re``).
"""

import enum
import re
from re import Pattern, compile, escape, error, findall, finditer, fullmatch, match, search, split, sub, subn

__all__ = ["Flag", "Pattern", "compile", "error", "escape", "findall", "finditer", "fullmatch", "match", "search",
           "split", "sub", "subn"]


class Flag(enum.IntFlag):
    """PyPcre's flag names, as the equivalent re flags."""

    CASELESS = re.IGNORECASE
    MULTILINE = re.MULTILINE
    DOTALL = re.DOTALL
    VERBOSE = re.VERBOSE
    ASCII = re.ASCII

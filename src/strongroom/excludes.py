"""Exclude patterns with the semantics of restic's ``--exclude`` / ``--exclude-file``.

A pattern is split on the path separator into components, and each component is a glob in
the syntax of Go's ``filepath.Match``: ``*`` (any run of characters), ``?`` (one character),
``[...]`` classes with ranges, negated by a leading ``^`` (or ``!``, as in shells), and
backslash escapes on POSIX. A component that is exactly ``**`` matches any number of path
components, including none.

How a pattern is tested against an absolute path (as restic's ``internal/filter`` does):

* A pattern starting with a separator is anchored: its first component must match the path's
  first component. Any other pattern may start matching at any component of the path.
* The pattern need not reach the end of the path: ``/home/*/.cache`` matches
  ``/home/bob/.cache/x/y``. So a pattern that matches a directory matches everything below it
  too, whether or not the caller descends.
* Patterns are cleaned like Go's ``filepath.Clean``: repeated separators, ``.`` components and
  a trailing separator are dropped, ``..`` removes the component before it.
* A pattern starting with ``!`` re-includes what earlier patterns excluded. The last pattern
  that matches a path decides, so a later plain pattern excludes again.
* Empty patterns are ignored.

Environment variables (``$VAR``, ``${VAR}``, ``$$`` for a literal dollar) are expanded in
patterns read by :func:`read_exclude_file`, like restic does for exclude files; patterns given
directly to :class:`ExcludeMatcher` are used as they are (the shell has already expanded
them). :func:`expand_env` is available for patterns from other sources.

With ``windows=True`` both ``\\`` and ``/`` separate components, backslash is not an escape,
matching ignores case, and a drive such as ``C:`` is an ordinary first component (so a
pattern starting with a separator never matches a path that starts with a drive).

Deliberate differences from restic:

* ``[!...]`` is a negated class like ``[^...]`` (Go reads ``!`` there as a literal).
* ``windows=True`` ignores case (restic's ``--exclude`` does not; its ``--iexclude`` does).
* Every ``**`` may match zero components, as documented. restic's loop bound misses some of
  these when a pattern has two or more ``**`` (``/a/**/b/**/c`` does not match ``/a/b/c``
  there; restic PR #21948).
* On Windows the pattern ``C:`` matches the drive component (Go cleans it to ``C:.``).

Each pattern is compiled once into a regular expression that is searched for in the whole
path (separators normalised to ``/``), starting at a separator; consecutive patterns of the
same polarity share one regex, so a path costs one regex search when no ``!`` patterns are
used.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Sequence

__all__ = ["ExcludeError", "ExcludeMatcher", "expand_env", "read_exclude_file"]


class ExcludeError(ValueError):
    """An exclude pattern is malformed or an exclude file cannot be read."""


class _BadPattern(Exception):
    """Internal: why a pattern component is malformed."""


# One non-separator character.
_ANY = "[^/]"
# Zero or more whole components, each followed by its separator (the expansion of "**").
# The inner run is possessive: it can only ever stop at a separator anyway.
_ANY_COMPONENTS = "(?:[^/]*+/)*"
# The end of a component.
_END = r"(?=/|\Z)"

_DRIVE = re.compile(r"[A-Za-z]:\Z")


def _char(c: str) -> str:
    """One literal character as regex, valid both inside and outside a class."""
    return re.escape(c)  # escapes all of \\ [ ] ^ - among others


def _parse_class(comp: str, i: int, escapes: bool) -> tuple[str, int]:
    """Translate the class starting just after the ``[`` at ``comp[i - 1]``.

    Follows Go's ``filepath.Match``: a class needs at least one item before its ``]``, a
    ``-`` or ``]`` where an item must start is an error, and ranges may use escapes.
    Returns the regex fragment and the index just after the closing ``]``.
    """
    n = len(comp)

    def item(j: int) -> tuple[str, int]:
        if j >= n or comp[j] in "-]":
            raise _BadPattern("bad character class")
        if comp[j] == "\\" and escapes:
            j += 1
            if j >= n:
                raise _BadPattern("unterminated character class")
        j += 1
        if j >= n:
            raise _BadPattern("unterminated character class")
        return comp[j - 1], j

    negated = i < n and comp[i] in "^!"
    if negated:
        i += 1
    ranges: list[str] = []
    count = 0
    while True:
        if i < n and comp[i] == "]" and count > 0:
            i += 1
            break
        lo, i = item(i)
        hi = lo
        if comp[i] == "-":
            hi, i = item(i + 1)
        count += 1
        if lo == hi:
            ranges.append(_char(lo))
        elif lo < hi:
            ranges.append(f"{_char(lo)}-{_char(hi)}")
        # lo > hi: a range that matches nothing (Go accepts it; Python's re would not).
    body = "".join(ranges)
    if negated:
        return f"[^/{body}]", i
    if not body:
        return "(?!)", i
    return f"[{body}]", i


def _component_regex(comp: str, escapes: bool) -> str:
    """Translate one glob component to a regex fragment that never crosses a ``/``."""
    chunks: list[str] = []  # literal/?/class runs, separated by stars
    pieces: list[str] = []
    n = len(comp)
    i = 0
    while i < n:
        c = comp[i]
        if c == "*":
            chunks.append("".join(pieces))
            pieces = []
            i += 1
        elif c == "?":
            pieces.append(_ANY)
            i += 1
        elif c == "[":
            frag, i = _parse_class(comp, i + 1, escapes)
            pieces.append(frag)
        elif c == "\\" and escapes:
            if i + 1 >= n:
                raise _BadPattern("trailing backslash")
            pieces.append(_char(comp[i + 1]))
            i += 2
        else:
            pieces.append(_char(c))
            i += 1
    chunks.append("".join(pieces))
    if len(chunks) == 1:
        return chunks[0]
    # head*mid1*mid2*...*tail. Every chunk matches a fixed number of characters, so taking
    # the leftmost occurrence of each middle chunk is always right: atomic groups stop the
    # regex engine from retrying the others (which is exponential for patterns like
    # "*a*a*a*a*b"). The same trick as fnmatch.translate.
    head, *middle, tail = chunks
    out = [head]
    out.extend(f"(?>[^/]*?{m})" for m in middle if m)
    out.append(f"[^/]*{tail}")
    return "".join(out)


def _split_clean(body: str, windows: bool) -> tuple[str, list[str]]:
    """Split a pattern into (root prefix regex, cleaned components).

    Every pattern regex is searched for starting at a ``/`` it consumes. The prefix is ``""``
    for a relative pattern (it may start after any separator), ``(?<=\\A/)`` for an anchored
    one (only after the path's first character, the root) and ``(?<=\\A/)/`` for a Windows
    UNC pattern.
    """
    raw = re.split(r"[\\/]", body) if windows else body.split("/")
    anchored = len(raw) > 1 and raw[0] == ""  # "" alone is Clean()ed to ".", not "/"
    prefix = ""
    fixed = 0  # number of leading components that ".." cannot remove
    comps: list[str] = []
    if anchored:
        prefix = r"(?<=\A/)/" if windows and len(raw) > 2 and raw[1] == "" else r"(?<=\A/)"
    elif windows and _DRIVE.match(raw[0]):
        comps.append(raw[0])
        raw = raw[1:]
        fixed = 1
    for c in raw:
        if c in ("", "."):
            continue
        if c == "..":
            if len(comps) > fixed and comps[-1] != "..":
                comps.pop()
            elif not anchored and not fixed:
                comps.append(c)
            continue
        comps.append(c)
    if not anchored and not comps:
        comps = ["."]  # filepath.Clean("") == "."
    return prefix, comps


def _pattern_regex(body: str, windows: bool) -> str:
    """Translate one pattern (without its ``!``) to a regex to search for after a ``/``."""
    prefix, comps = _split_clean(body, windows)
    parts: list[str | None] = []  # None stands for "**"
    for c in comps:
        if c == "**":
            if parts and parts[-1] is None:
                continue
            parts.append(None)
        else:
            parts.append(_component_regex(c, escapes=not windows))
    # A trailing "**" adds nothing (the match need not reach the end of the path), nor does a
    # leading one in a relative pattern, unless it is all there is.
    while len(parts) > 1 and parts[-1] is None:
        parts.pop()
    if prefix:
        while parts and parts[-1] is None:
            parts.pop()
    elif len(parts) > 1 and parts[0] is None:
        parts.pop(0)
    if parts == [None]:
        return prefix  # a lone "**": any path with at least one component
    out = [prefix]
    after_component = False
    for p in parts:
        if after_component:
            out.append("/")
        if p is None:
            out.append(_ANY_COMPONENTS)
            after_component = False
        else:
            out.append(p)
            after_component = True
    if parts:
        out.append(_END)
    return "".join(out)


class ExcludeMatcher:
    """A compiled list of restic-style exclude patterns; see the module docstring."""

    __slots__ = ("_runs", "_windows", "patterns")

    def __init__(self, patterns: Sequence[str], *, windows: bool | None = None) -> None:
        if isinstance(patterns, str):
            raise TypeError("patterns must be a sequence of strings, not a string")
        self._windows = os.name == "nt" if windows is None else windows
        self.patterns: tuple[str, ...] = tuple(p for p in patterns if p)
        flags = re.IGNORECASE if self._windows else 0
        # Consecutive patterns of the same polarity, as (negated, regex sources).
        groups: list[tuple[bool, list[str]]] = []
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            try:
                source = _pattern_regex(pattern[1:] if negated else pattern, self._windows)
                re.compile(f"/(?:{source})", flags)
            except (_BadPattern, re.error) as e:
                raise ExcludeError(f"invalid exclude pattern {pattern!r}: {e}") from None
            if groups and groups[-1][0] == negated:
                groups[-1][1].append(source)
            else:
                groups.append((negated, [source]))
        # Checked last to first: the last pattern that matches decides.
        self._runs: tuple[tuple[re.Pattern[str], bool], ...] = tuple(
            (re.compile(f"/(?:{'|'.join(sources)})", flags), negated)
            for negated, sources in reversed(groups)
        )

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (absolute, native form) is excluded by the patterns."""
        if not path or not self._runs:
            return False
        if self._windows:
            path = path.replace("\\", "/")
        if path[0] != "/":
            # A path without a root marker (e.g. "C:/x"): relative patterns may match from its
            # first component, which they find after a separator; anchored ones never match.
            path = "\0/" + path
        for regex, negated in self._runs:
            if regex.search(path) is not None:
                return not negated
        return False

    def __bool__(self) -> bool:
        return bool(self._runs)

    def __repr__(self) -> str:
        return f"ExcludeMatcher({list(self.patterns)!r}, windows={self._windows})"


# Go's os.Expand: ${name}, ${<special>}, $<special>, $name; "${}" and an unterminated "${"
# are dropped; a "$" followed by nothing usable stays.
_ENV_REF = re.compile(
    r"\$(?:\{([*#$@!?0-9-])\}|\{\}|\{([^}]+)\}|\{|([*#$@!?0-9-])|([A-Za-z_][A-Za-z0-9_]*))"
)


def _env_value(m: re.Match[str]) -> str:
    name = m.group(1) or m.group(2) or m.group(3) or m.group(4)
    if not name:
        return ""  # bad syntax: Go drops it
    if name == "$":
        return "$"
    return os.environ.get(name, "")


def expand_env(text: str) -> str:
    """Expand ``$VAR`` and ``${VAR}`` as restic does in exclude files.

    Unset variables expand to nothing; ``$$`` is a literal ``$``.
    """
    if "$" not in text:
        return text
    return _ENV_REF.sub(_env_value, text)


# What Go's strings.TrimSpace strips (unicode.IsSpace), which is not quite str.isspace().
_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
)


def read_exclude_file(path: str) -> list[str]:
    """Read patterns from an exclude file, as restic's ``--exclude-file`` does.

    One pattern per line; surrounding whitespace is stripped, blank lines and lines starting
    with ``#`` are skipped, and environment variables are expanded (:func:`expand_env`).
    The file is UTF-8 (bytes that are not valid UTF-8 are kept as surrogate escapes, like
    :func:`os.fsdecode`), or UTF-16 with a byte-order mark.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ExcludeError(f"cannot read exclude file {path!r}: {e.strerror or e}") from None
    if data.startswith(codecs.BOM_UTF8):
        text = data[len(codecs.BOM_UTF8) :].decode("utf-8", "surrogateescape")
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise ExcludeError(f"cannot read exclude file {path!r}: bad UTF-16: {e}") from None
    else:
        text = data.decode("utf-8", "surrogateescape")
    patterns: list[str] = []
    for line in text.split("\n"):
        line = line.strip(_SPACE)
        if not line or line.startswith("#"):
            continue
        patterns.append(expand_env(line))
    return patterns

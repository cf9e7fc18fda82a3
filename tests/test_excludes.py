"""Tests for strongroom.excludes: restic-compatible exclude patterns."""

from __future__ import annotations

import codecs
import fnmatch
import os
import posixpath
import re
import time
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from strongroom import excludes
from strongroom.excludes import ExcludeError, ExcludeMatcher, expand_env, read_exclude_file


def posix(*patterns: str) -> ExcludeMatcher:
    return ExcludeMatcher(patterns, windows=False)


def win(*patterns: str) -> ExcludeMatcher:
    return ExcludeMatcher(patterns, windows=True)


# --------------------------------------------------------------------------------------------
# restic's own test vectors (internal/filter/filter_test.go, TestMatch)

RESTIC_MATCH_VECTORS = [
    ("*.go", "/foo/bar/test.go", True),
    ("*.c", "/foo/bar/test.go", False),
    ("*", "/foo/bar/test.go", True),
    ("**", "/foo/bar/test.go", True),
    ("foo*", "/foo/bar/test.go", True),
    ("bar*", "/foo/bar/test.go", True),
    ("/bar*", "/foo/bar/test.go", False),
    ("bar/*", "/foo/bar/test.go", True),
    ("baz/*", "/foo/bar/test.go", False),
    ("bar/test.go", "/foo/bar/test.go", True),
    ("bar/*.go", "/foo/bar/test.go", True),
    ("ba*/*.go", "/foo/bar/test.go", True),
    ("bb*/*.go", "/foo/bar/test.go", False),
    ("test.*", "/foo/bar/test.go", True),
    ("tesT.*", "/foo/bar/test.go", False),
    ("bar/*", "/foo/bar/baz", True),
    ("bar", "/foo/bar", True),
    ("/foo/bar", "/foo/bar", True),
    ("/foo/bar/", "/foo/bar", True),
    ("/foo/bar", "/foo/baz", False),
    ("/foo/bar", "/foo/baz/", False),
    ("/foo///bar", "/foo/bar", True),
    ("/foo/../bar", "/foo/bar", False),
    ("/foo/../bar", "/bar", True),
    ("/foo", "/foo/baz", True),
    ("/foo/", "/foo/baz", True),
    ("/foo/*", "/foo", False),
    ("/foo/*", "/foo/baz", True),
    ("bar", "/foo/bar/baz", True),
    ("bar", "/foo/bar/test.go", True),
    ("/foo/*test.*", "/foo/bar/test.go", False),
    ("/foo/*/test.*", "/foo/bar/test.go", True),
    ("/foo/*/bar/test.*", "/foo/bar/test.go", False),
    ("/*/*/bar/test.*", "/foo/bar/test.go", False),
    ("/*/*/bar/test.*", "/foo/bar/baz/test.go", False),
    ("/*/*/baz/test.*", "/foo/bar/baz/test.go", True),
    ("/*/foo/bar/test.*", "/foo/bar/baz/test.go", False),
    ("/foo/bar/test.*", "bar/baz/test.go", False),
    ("/x/y/bar/baz/test.*", "bar/baz/test.go", False),
    ("baz/test.*", "bar/baz/test.go", True),
    ("baz/tesT.*", "bar/baz/test.go", False),
    ("test.go", "bar/baz/test.go", True),
    ("*.go", "bar/baz/test.go", True),
    ("*.c", "bar/baz/test.go", False),
    ("sdk", "/foo/bar/sdk", True),
    ("sdk", "/foo/bar/sdk/test/sdk_foo.go", True),
    (
        "sdk/*/cpp/*/*vars*.html",
        "/usr/share/doc/libreoffice/sdk/docs/cpp/ref/a00517.html",
        False,
    ),
    ("foo/**/bar/*.go", "/home/user/foo/work/special/project/bar/test.go", True),
    ("foo/**/bar/*.go", "/home/user/foo/bar/test.go", True),
    ("foo/**/bar/*.go", "x/foo/bar/test.go", True),
    ("foo/**/bar/*.go", "foo/bar/test.go", True),
    ("foo/**/bar/*.go", "foo/bar/baz/bar/test.go", True),
    ("foo/**/bar/*.go", "/home/user/foo/test.c", False),
    ("foo/**/bar/*.go", "bar/foo/main.go", False),
    ("foo/**/bar/*.go", "/foo/bar/main.go", True),
    ("foo/**/bar/*.go", "bar/main.go", False),
    ("foo/**/bar", "/home/user/foo/x/y/bar", True),
    ("foo/**/bar", "/home/user/foo/x/y/bar/main.go", True),
    ("foo/**/bar/**/x", "/home/user/foo/bar/x", True),
    ("foo/**/bar/**/x", "/home/user/foo/blaaa/blaz/bar/shared/work/x", True),
    ("user/**/important*", "/home/user/work/x/y/hidden/x", False),
    ("user/**/hidden*/**/c", "/home/user/work/x/y/hidden/z/a/b/c", True),
    ("c:/foo/*test.*", "c:/foo/bar/test.go", False),
    ("c:/foo", "c:/foo/bar", True),
    ("c:/foo/", "c:/foo/bar", True),
    ("c:/foo/*/test.*", "c:/foo/bar/test.go", True),
    ("c:/foo/*/bar/test.*", "c:/foo/bar/test.go", False),
    ("/home/[uU]ser/?.go", "/home/user/F.go", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), RESTIC_MATCH_VECTORS)
def test_restic_match_vectors(pattern: str, path: str, expected: bool) -> None:
    assert posix(pattern).excluded(path) is expected


# The same table, with "\" as the separator, as restic runs it on Windows. The two vectors that
# rely on case-sensitivity are left out: with windows=True matching ignores case.
WINDOWS_VECTORS = [v for v in RESTIC_MATCH_VECTORS if "tesT" not in v[0]]


@pytest.mark.parametrize(("pattern", "path", "expected"), WINDOWS_VECTORS)
def test_restic_match_vectors_windows_native_separators(
    pattern: str, path: str, expected: bool
) -> None:
    m = win(pattern.replace("/", "\\"))
    assert m.excluded(path.replace("/", "\\")) is expected
    assert m.excluded(path) is expected


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        ([], "/foo/bar/test.go", False),
        (["*.go"], "/foo/bar/test.go", True),
        (["*.c"], "/foo/bar/test.go", False),
        (["*.go", "*.c"], "/foo/bar/test.go", True),
        (["*"], "/foo/bar/test.go", True),
        (["x"], "/foo/bar/test.go", False),
        (["?"], "/foo/bar/test.go", False),
        (["?", "x"], "/foo/bar/x", True),
        (["/*/*/bar/test.*"], "/foo/bar/test.go", False),
        (["/*/*/bar/test.*", "*.go"], "/foo/bar/test.go", True),
        (["", "*.c"], "/foo/bar/test.go", False),
    ],
)
def test_restic_list_vectors(patterns: list[str], path: str, expected: bool) -> None:
    assert posix(*patterns).excluded(path) is expected


# --------------------------------------------------------------------------------------------
# restic's documented examples (doc/040_backup.rst, "Excluding Files")


def test_doc_star_go() -> None:
    m = posix("*.go")
    assert m.excluded("/home/user/work/main.go")
    assert m.excluded("/main.go")
    assert not m.excluded("/home/user/work/main.go.txt")
    assert not m.excluded("/home/user/work/main.c")


def test_doc_anchored_home_cache() -> None:
    m = posix("/home/*/.cache")
    assert m.excluded("/home/bob/.cache")
    assert m.excluded("/home/bob/.cache/pip/http/x")
    assert not m.excluded("/home/bob/.cachex")
    assert not m.excluded("/home/bob/sub/.cache")  # "*" spans exactly one component
    assert not m.excluded("/srv/home/bob/.cache")  # anchored at the root
    assert not m.excluded("/home/.cache")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dir1/foo/dir2/bar/file", True),
        ("/foo/bar/file", True),
        ("/tmp/foo/bar", True),
        ("/tmp/foo/x/y/z/bar", True),
        ("/tmp/foo", False),
        ("/tmp/bar/foo", False),
        ("/tmp/foobar/bar", False),
    ],
)
def test_doc_double_star_between(path: str, expected: bool) -> None:
    assert posix("foo/**/bar").excluded(path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/bar", True), ("/a/bar", True), ("/a/b/c/bar/d", True), ("/a/bars", False)],
)
def test_doc_leading_double_star(path: str, expected: bool) -> None:
    assert posix("**/bar").excluded(path) is expected


def test_doc_whole_components_only() -> None:
    m = posix("foo")
    assert m.excluded("/dir1/foo/dir2/file")
    assert m.excluded("/dir/foo")
    assert not m.excluded("/dir/foobar")
    assert not m.excluded("/dir/barfoo")


def test_doc_leading_slash_anchors() -> None:
    m = posix("/bin")
    assert m.excluded("/bin/bash")
    assert not m.excluded("/usr/bin/restic")


def test_doc_wildcard_does_not_cross_separator() -> None:
    m = posix("b*ash")
    assert m.excluded("/bin/bash")
    assert not m.excluded("/bin/ash")
    assert not posix("/b*sh").excluded("/bin/bash")


def test_star_c_excludes_directories_and_their_contents() -> None:
    m = posix("*.c")
    assert m.excluded("/src/main.c")
    assert m.excluded("/src/weird.c")  # also a directory of that name...
    assert m.excluded("/src/weird.c/inner.h")  # ...and everything below it
    assert not m.excluded("/src/c/inner.h")
    assert not m.excluded("/src/main.cc")


def test_character_class_range() -> None:
    m = posix("[a-c].txt")
    assert m.excluded("/x/a.txt")
    assert m.excluded("/x/b.txt")
    assert m.excluded("/x/c.txt")
    assert not m.excluded("/x/d.txt")
    assert not m.excluded("/x/A.txt")  # case-sensitive on POSIX
    assert not m.excluded("/x/ab.txt")


@pytest.mark.parametrize("neg", ["^", "!"])
def test_negated_character_class(neg: str) -> None:
    m = posix(f"[{neg}a-c]x")
    assert m.excluded("/d/dx")
    assert m.excluded("/d/.x")
    assert not m.excluded("/d/ax")
    assert not m.excluded("/d/x")


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("[\\]]", "]", True),
        ("[\\-]", "-", True),
        ("[\\-]", "a", False),
        ("[a-c\\]]", "]", True),
        ("]", "]", True),
        ("-", "-", True),
        ("[z-a]", "m", False),  # inverted range: valid, matches nothing
        ("[^z-a]", "m", True),
        ("[^^]", "^", False),
        ("[^^]", "q", True),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("a*", "a", True),
        ("*a*b", "xaxxb", True),
        ("*a*ab", "ab", False),
        ("*a*ab", "aab", True),
        ("**x", "abcx", True),  # "**" inside a component is just "*"
        ("a**x", "a/x", False),
    ],
)
def test_component_glob(pattern: str, name: str, expected: bool) -> None:
    assert posix(pattern).excluded("/dir/" + name) is expected


def test_backslash_escapes_on_posix() -> None:
    m = posix("\\*")
    assert m.excluded("/d/*")
    assert not m.excluded("/d/a")
    assert posix("a\\?b").excluded("/d/a?b")
    assert not posix("a\\?b").excluded("/d/axb")
    assert posix("\\[x]").excluded("/d/[x]")
    assert not posix("\\[x]").excluded("/d/x")
    # an escaped "!" is a literal, not a negation
    assert posix("\\!keep").excluded("/d/!keep")
    # a backslash in a POSIX path is an ordinary character
    assert posix("C:\\\\Users").excluded("/mnt/C:\\Users")
    assert not posix("Users").excluded("/mnt/C:\\Users")


# --------------------------------------------------------------------------------------------
# anchoring, trailing separators, cleaning


def test_anchored_vs_relative() -> None:
    assert posix("/foo").excluded("/foo")
    assert not posix("/foo").excluded("/bar/foo")
    assert posix("foo").excluded("/bar/foo")
    assert posix("foo").excluded("/foo")
    assert posix("bar/foo").excluded("/x/bar/foo/y")
    assert not posix("/bar/foo").excluded("/x/bar/foo/y")


def test_relative_pattern_does_not_match_the_root_marker() -> None:
    # "*/a" needs a component before "a"; the root itself is not one.
    assert not posix("*/a").excluded("/a")
    assert posix("*/a").excluded("/x/a")


def test_trailing_separator_is_ignored() -> None:
    for pattern in ("foo/", "foo//", "foo/."):
        m = posix(pattern)
        assert m.excluded("/a/foo"), pattern
        assert m.excluded("/a/foo/b"), pattern
        assert not m.excluded("/a/foobar"), pattern
    assert posix("/tmp/").excluded("/tmp")
    assert posix("/tmp/").excluded("/tmp/x")
    assert not posix("/tmp/").excluded("/var/tmp")


def test_pattern_is_cleaned() -> None:
    assert posix("/a/./b").excluded("/a/b")
    assert posix("a//b").excluded("/x/a/b")
    assert posix("/../etc").excluded("/etc/passwd")  # ".." stops at the root
    assert posix("a/b/../c").excluded("/x/a/c")
    assert not posix("a/b/../c").excluded("/x/a/b/c")
    assert posix("../x").excluded("/a/../x")  # a leading ".." stays a literal component
    assert not posix("../x").excluded("/a/x")


def test_paths_are_not_cleaned() -> None:
    assert not posix("/a/b").excluded("/a/./b")
    assert posix("a/*/b").excluded("/a//b")  # an empty component matches "*"


def test_double_star_forms() -> None:
    assert posix("**").excluded("/")
    assert posix("**").excluded("/x")
    assert posix("/**").excluded("/x/y")
    assert posix("/").excluded("/x/y")  # restic: "/" cleans to the root, which is "/**"
    assert posix("**/**").excluded("/x")
    assert posix("foo/**").excluded("/a/foo")
    assert not posix("foo/**").excluded("/a/foox")
    assert posix("/**/bar").excluded("/bar")
    assert posix("/**/bar").excluded("/a/b/bar/c")
    assert not posix("/**/bar").excluded("/a/b/barn")
    assert posix("/a/**/**/b").excluded("/a/b")
    assert posix("/a/**/**/b").excluded("/a/x/y/b")
    assert not posix("/a/**/b").excluded("/x/a/b")


def test_every_double_star_may_match_nothing() -> None:
    # Documented semantics; restic's own loop bound gets these wrong (restic PR #21948).
    assert posix("/a/**/b/**/c").excluded("/a/b/c")
    assert posix("/srv/**/data/**/*.key").excluded("/srv/app/data/secret.key")
    assert posix("/home/**/cache/**").excluded("/home/user/cache")
    assert posix("a/**/b/**/c").excluded("a/b/c")


def test_empty_patterns_are_ignored() -> None:
    assert not ExcludeMatcher([], windows=False)
    assert not ExcludeMatcher([""], windows=False)
    assert not posix("", "").excluded("/x")
    assert ExcludeMatcher(["x"], windows=False)
    assert ExcludeMatcher(["", "x"], windows=False).patterns == ("x",)


def test_empty_path_is_never_excluded() -> None:
    assert not posix("**").excluded("")


def test_windows_default_follows_os_name() -> None:
    m = ExcludeMatcher(["AppData"])
    assert m.excluded("C:\\Users\\x\\AppData") is (os.name == "nt")


def test_a_single_string_is_rejected() -> None:
    with pytest.raises(TypeError):
        ExcludeMatcher("*.o")


# --------------------------------------------------------------------------------------------
# negation


def test_negation_reincludes() -> None:
    m = posix("*.log", "!important.log")
    assert m.excluded("/var/x/debug.log")
    assert not m.excluded("/var/x/important.log")


def test_negation_order_later_wins() -> None:
    assert not posix("foo", "!foo").excluded("/a/foo")
    assert posix("!foo", "foo").excluded("/a/foo")
    assert posix("*.log", "!important.log", "/var/**").excluded("/var/x/important.log")
    assert not posix("*.log", "!important.log", "/var/**").excluded("/srv/x/important.log")


def test_bare_exclamation_mark_is_not_a_negated_root() -> None:
    # "!" negates the empty pattern, which restic cleans to "." (not "/"): it re-includes
    # nothing.
    m = posix("*", "!")
    assert m.excluded("/a")
    assert m.excluded("/")
    assert not m.excluded("/a/./b")  # like "!.": it re-includes a literal "." component


def test_negation_only_cancels_earlier_matches() -> None:
    m = posix("!keep")
    assert not m.excluded("/a/keep")
    assert not m.excluded("/a/other")
    assert m  # it is still a pattern


def test_negation_does_not_reinclude_below_excluded_directory() -> None:
    # The directory itself stays excluded, so a caller that prunes never reaches the file.
    m = posix("/data/*", "!/data/*/keep.txt")
    assert m.excluded("/data/sub")
    assert not m.excluded("/data/sub/keep.txt")
    assert m.excluded("/data/sub/other.txt")


def test_doc_negation_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/bob")
    f = tmp_path / "excludes.txt"
    f.write_text(
        "$HOME/*\n!$HOME/Documents\n!$HOME/code\n!$HOME/.emacs.d\n!$HOME/games\n"
        "# [...]\nnode_modules\n*~\n*.o\n*.lo\n*.pyc\n"
    )
    m = ExcludeMatcher(read_exclude_file(str(f)), windows=False)
    assert m.excluded("/home/bob/Music")
    assert m.excluded("/home/bob/.bashrc")
    assert not m.excluded("/home/bob/Documents")
    assert not m.excluded("/home/bob/Documents/report.odt")
    assert not m.excluded("/home/bob/code/strongroom/main.py")
    assert m.excluded("/home/bob/code/web/node_modules")
    assert m.excluded("/home/bob/code/strongroom/main.pyc")
    assert m.excluded("/home/bob/Documents/draft.txt~")
    assert not m.excluded("/home/alice/Music")
    assert not m.excluded("/etc/passwd")


# --------------------------------------------------------------------------------------------
# invalid patterns


@pytest.mark.parametrize(
    "pattern",
    [
        "[",
        "foo[",
        "/a/[b/c",  # the separator splits the class
        "[a",
        "[a-",
        "[a-]",
        "[-a]",
        "[]",
        "[]a]",
        "[^]",
        "[!]",
        "[a-z-0]",
        "[\\",
        "foo\\",
        "a/b\\/c",
        "![",
        "x\n[",
    ],
)
def test_invalid_pattern_raises(pattern: str) -> None:
    with pytest.raises(ExcludeError) as info:
        ExcludeMatcher(["ok", pattern], windows=False)
    message = str(info.value)
    assert repr(pattern) in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_invalid_pattern_in_unreached_component_still_raises() -> None:
    # Validated up front, not when a path first reaches that component.
    with pytest.raises(ExcludeError):
        ExcludeMatcher(["/nonexistent/x/[oops"], windows=False)


def test_trailing_backslash_is_a_separator_on_windows() -> None:
    m = win("foo\\")
    assert m.excluded("C:\\x\\foo\\y")
    with pytest.raises(ExcludeError):
        posix("foo\\")


# --------------------------------------------------------------------------------------------
# Windows


def test_windows_relative_component() -> None:
    m = win("AppData")
    assert m.excluded("C:\\Users\\x\\AppData")
    assert m.excluded("C:\\Users\\x\\AppData\\Local\\Temp\\f.tmp")
    assert not m.excluded("C:\\Users\\x\\AppDataBackup")
    assert not m.excluded("C:\\Users\\x\\Documents")


def test_windows_case_insensitive() -> None:
    m = win("appdata")
    assert m.excluded("C:\\Users\\x\\AppData")
    assert m.excluded("c:\\users\\x\\APPDATA\\y")
    assert win("*.TMP").excluded("C:\\t\\a.tmp")
    assert win("[a-c].txt").excluded("C:\\t\\B.TXT")
    assert not win("[^a-c].txt").excluded("C:\\t\\B.TXT")
    # POSIX stays case-sensitive
    assert not posix("appdata").excluded("/Users/x/AppData")


def test_windows_drive_pattern_with_forward_slashes() -> None:
    m = win("C:/Users/*/AppData")
    assert m.excluded("C:\\Users\\bob\\AppData")
    assert m.excluded("C:\\Users\\bob\\AppData\\Local\\x")
    assert m.excluded("c:\\users\\bob\\appdata")
    assert not m.excluded("D:\\Users\\bob\\AppData")
    assert not m.excluded("C:\\Users\\AppData")
    assert not m.excluded("C:\\Users\\bob\\sub\\AppData")
    assert win("C:\\Users\\*\\AppData").excluded("C:/Users/bob/AppData")


def test_windows_drive_is_a_component() -> None:
    assert win("C:").excluded("C:\\anything\\at\\all")
    assert not win("C:").excluded("D:\\anything")
    assert win("?:/Windows").excluded("E:\\Windows\\System32")
    assert win("C:\\..\\Temp").excluded("C:\\Temp\\x")  # ".." stops at the drive


def test_windows_mixed_separators_in_path() -> None:
    m = win("Users/*/AppData")
    assert m.excluded("C:/Users\\bob/AppData\\Local")


def test_windows_backslash_is_not_an_escape() -> None:
    m = win("foo\\*bar")  # "foo" then a component "*bar"
    assert m.excluded("C:\\x\\foo\\abar")
    assert not m.excluded("C:\\x\\foo*bar")


def test_windows_leading_separator_never_matches_drive_paths() -> None:
    # As in restic: a pattern starting with a separator is anchored at "/", which a path that
    # starts with a drive does not have.
    assert not win("\\Windows").excluded("C:\\Windows")
    assert win("\\Windows").excluded("\\Windows\\System32")


def test_windows_unc_pattern() -> None:
    m = win("\\\\server\\share\\tmp")
    assert m.excluded("\\\\server\\share\\tmp")
    assert m.excluded("\\\\SERVER\\share\\tmp\\x")
    assert not m.excluded("\\\\other\\share\\tmp")
    assert win("tmp").excluded("\\\\server\\share\\tmp\\x")


# --------------------------------------------------------------------------------------------
# non-UTF-8 names


def test_surrogate_escaped_names() -> None:
    path = os.fsdecode(b"/data/\xff\xfe-caf\xe9.bin")
    assert posix("*.bin").excluded(path)
    assert posix("/data/*").excluded(path)
    assert not posix("*.txt").excluded(path)
    assert posix(os.fsdecode(b"\xff\xfe-caf\xe9.bin")).excluded(path)
    assert not posix(os.fsdecode(b"\xff\xfe-caf\xe8.bin")).excluded(path)
    # each undecodable byte is one character, as in Go (one invalid byte = one rune)
    assert posix("??-caf?.bin").excluded(path)
    assert not posix("?-caf?.bin").excluded(path)
    assert posix(os.fsdecode(b"[\x80-\xff]*")).excluded(path)
    assert win("*.BIN").excluded(os.fsdecode(b"C:\\data\\\xff.bin"))


def test_surrogate_in_directory_excludes_children() -> None:
    d = os.fsdecode(b"/srv/\xe9t\xe9")
    m = posix(d)
    assert m.excluded(d + "/x/y")
    assert not m.excluded("/srv/été")


# --------------------------------------------------------------------------------------------
# compiled once


def test_excluded_does_not_reparse_or_use_fnmatch(monkeypatch: pytest.MonkeyPatch) -> None:
    m = posix("*.o", "/home/*/.cache", "foo/**/bar", "!keep.o", "[a-c]x")
    expected = [True, True, True, False, True, False]
    paths = ["/a/b.o", "/home/u/.cache/x", "/foo/1/2/bar", "/a/keep.o", "/bx", "/dx"]

    def boom(*args: object, **kwargs: object) -> str:
        raise AssertionError("pattern re-parsed at match time")

    monkeypatch.setattr(excludes, "_pattern_regex", boom)
    monkeypatch.setattr(excludes, "_component_regex", boom)
    monkeypatch.setattr(excludes, "_parse_class", boom)
    monkeypatch.setattr(fnmatch, "translate", boom)
    monkeypatch.setattr(fnmatch, "fnmatch", boom)
    monkeypatch.setattr(fnmatch, "fnmatchcase", boom)
    monkeypatch.setattr(re, "compile", boom)
    got = [m.excluded(p) for p in paths]
    monkeypatch.undo()
    assert got == expected


def test_no_catastrophic_backtracking() -> None:
    m = posix("*a*a*a*a*a*a*a*b", "**/x/**/y/**/z/**/q")
    name = "a" * 48  # enough for seconds of backtracking without atomic groups
    deep = "/" + "/".join(["x", "y", "z"] * 30)
    start = time.perf_counter()
    assert not m.excluded(f"/d/{name}")
    assert not m.excluded(deep)
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------------------------
# environment expansion


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$HOME/.cache", "/home/bob/.cache"),
        ("${HOME}/.cache", "/home/bob/.cache"),
        ("${HOME}x", "/home/bobx"),
        ("$HOMEx", ""),  # the name runs to the end of the alphanumerics, and is unset
        ("$UNSET_VAR_XYZ/a", "/a"),
        ("a$$b", "a$b"),
        ("${$}", "$"),
        ("cost$", "cost$"),
        ("a$ b", "a$ b"),
        ("a$%b", "a$%b"),
        ("${}x", "x"),
        ("${HOME", "HOME"),
        ("$1x", "x"),
        ("no dollars", "no dollars"),
        ("$SR_WITH_SPACE", "a b"),
    ],
)
def test_expand_env(text: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/bob")
    monkeypatch.setenv("SR_WITH_SPACE", "a b")
    monkeypatch.delenv("HOMEx", raising=False)
    monkeypatch.delenv("UNSET_VAR_XYZ", raising=False)
    monkeypatch.delenv("1", raising=False)
    assert expand_env(text) == expected


def test_matcher_does_not_expand_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SR_DIR", "secret")
    m = posix("$SR_DIR")
    assert m.excluded("/a/$SR_DIR")
    assert not m.excluded("/a/secret")


# --------------------------------------------------------------------------------------------
# read_exclude_file


def test_read_exclude_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SR_USER", "bob")
    monkeypatch.delenv("SR_UNSET", raising=False)
    f = tmp_path / "ex.txt"
    f.write_bytes(
        b"# exclude go-files\n"
        b"*.go\n"
        b"\n"
        b"   \t\n"
        b"  # indented comment\n"
        b"  foo bar star.txt  \r\n"
        b"/home/$SR_USER/tmp\n"
        b"/home/${SR_USER}x\n"
        b"price$$\n"
        b"$SR_UNSET\n"
        b"!keep#this\n"
        b"last-without-newline"
    )
    assert read_exclude_file(str(f)) == [
        "*.go",
        "foo bar star.txt",
        "/home/bob/tmp",
        "/home/bobx",
        "price$",
        "",
        "!keep#this",
        "last-without-newline",
    ]


def test_doc_exclude_file_example(tmp_path: Path) -> None:
    f = tmp_path / "excludes.txt"
    f.write_text(
        "# exclude go-files\n*.go\n# exclude foo/x/y/z/bar foo/x/bar foo/bar\nfoo/**/bar\n"
    )
    m = ExcludeMatcher(["*.c", *read_exclude_file(str(f))], windows=False)
    assert m.excluded("/work/a.c")
    assert m.excluded("/work/a.go")
    for p in ("/work/foo/x/y/z/bar", "/work/foo/x/bar", "/work/foo/bar", "/work/foo/bar/f"):
        assert m.excluded(p), p
    assert not m.excluded("/work/foo/x")
    assert not m.excluded("/work/a.h")


def test_read_exclude_file_boms(tmp_path: Path) -> None:
    f8 = tmp_path / "utf8.txt"
    f8.write_bytes(codecs.BOM_UTF8 + "*.tmp\ncafé\n".encode())
    assert read_exclude_file(str(f8)) == ["*.tmp", "café"]
    f16 = tmp_path / "utf16.txt"
    f16.write_bytes("*.tmp\r\ncafé\r\n".encode("utf-16"))  # with a BOM
    assert read_exclude_file(str(f16)) == ["*.tmp", "café"]
    bad16 = tmp_path / "bad16.txt"
    bad16.write_bytes(codecs.BOM_UTF16_LE + b"a\x00\x00\xd8")  # lone high surrogate
    with pytest.raises(ExcludeError):
        read_exclude_file(str(bad16))


def test_read_exclude_file_non_utf8(tmp_path: Path) -> None:
    f = tmp_path / "ex.txt"
    f.write_bytes(b"/srv/\xe9t\xe9\n")
    patterns = read_exclude_file(str(f))
    assert patterns == [os.fsdecode(b"/srv/\xe9t\xe9")]
    assert posix(*patterns).excluded(os.fsdecode(b"/srv/\xe9t\xe9/x"))


def test_read_exclude_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ExcludeError) as info:
        read_exclude_file(str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "\n" not in message


def test_read_exclude_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ExcludeError):
        read_exclude_file(str(tmp_path))


def test_read_exclude_file_empty(tmp_path: Path) -> None:
    f = tmp_path / "empty.txt"
    f.write_bytes(b"# only a comment\n\n")
    assert read_exclude_file(str(f)) == []
    assert not ExcludeMatcher(read_exclude_file(str(f)), windows=False)


# --------------------------------------------------------------------------------------------
# properties

# Components of real paths: anything but the separator, including the lone surrogates that
# os.fsdecode() makes of undecodable bytes.
component = st.text(
    alphabet=st.one_of(
        st.characters(exclude_characters="/"),
        st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)]),
    ),
    min_size=1,
    max_size=12,
)
abs_path = st.lists(component, min_size=1, max_size=6).map(lambda cs: "/" + "/".join(cs))


def glob_escape(name: str) -> str:
    """A pattern that matches exactly the component ``name`` (POSIX)."""
    escaped = re.sub(r"([\\*?\[\]])", r"\\\1", name)
    return "\\" + escaped if escaped.startswith("!") else escaped


@given(abs_path)
def test_prop_last_component_literal_matches(path: str) -> None:
    last = path.rsplit("/", 1)[1]
    assert posix(glob_escape(last)).excluded(path)


@given(
    st.lists(component.filter(lambda c: c not in (".", "..")), min_size=1, max_size=6), component
)
def test_prop_anchored_full_path_matches_itself_and_below(parts: list[str], child: str) -> None:
    path = "/" + "/".join(parts)
    m = posix("/" + "/".join(glob_escape(p) for p in parts))
    assert m.excluded(path)
    assert m.excluded(path + "/" + child)
    assert not m.excluded("/prefix-" + path.lstrip("/"))


@given(abs_path)
def test_prop_double_star_matches_everything(path: str) -> None:
    assert posix("**").excluded(path)
    assert posix("/**").excluded(path)
    assert win("**").excluded(path)


@given(abs_path, st.lists(st.text(max_size=12), max_size=4))
def test_prop_never_raises(path: str, patterns: list[str]) -> None:
    for windows in (False, True):
        try:
            m = ExcludeMatcher(patterns, windows=windows)
        except ExcludeError as e:
            assert "\n" not in str(e)
            continue
        assert m.excluded(path) in (True, False)
        assert m.excluded(path.lstrip("/") or "x") in (True, False)


@given(st.text(max_size=40), st.text(max_size=20))
def test_prop_arbitrary_text_path(path: str, pattern: str) -> None:
    try:
        m = posix(pattern, "!" + pattern, "*")
    except ExcludeError:
        return
    assert m.excluded(path) is bool(path)  # "*" comes last and matches any non-empty path


# Differential test against a direct port of restic's filter.match(), with components
# matched by fnmatch (which agrees with Go's filepath.Match on this restricted alphabet).

# Small alphabets, so that patterns and paths often (nearly) match.
glob_atom = st.sampled_from(["a", "b", "*", "?", "[ab]", "[!a]"])
pattern_component = st.one_of(
    st.sampled_from(["a", "b", "ab", "*", "a*", "?"]),
    st.lists(glob_atom, min_size=1, max_size=3).map("".join),
    st.sampled_from(["**", "**", "", ".", "..", "a**"]),
)
small_pattern = st.tuples(
    st.booleans(), st.lists(pattern_component, min_size=1, max_size=5), st.booleans()
).map(lambda t: ("/" if t[0] else "") + "/".join(t[1]) + ("/" if t[2] else ""))
path_component = st.one_of(
    st.sampled_from(["a", "b", "ab", "ba"]), st.text(alphabet="ab.", max_size=3)
)
small_path = st.tuples(st.booleans(), st.lists(path_component, min_size=1, max_size=6)).map(
    lambda t: ("/" if t[0] else "") + "/".join(t[1])
)


def _go_clean(p: str) -> str:
    c = posixpath.normpath(p) if p else "."
    return "/" + c.lstrip("/") if c.startswith("//") else c


def _split(p: str) -> list[str]:
    parts = p.split("/")
    if parts[0] == "":
        parts[0] = "/"
    return parts


def _restic_match(parts: list[str], strs: list[str]) -> bool:
    if "**" in parts:
        pos = parts.index("**")
        # restic bounds i by len(strs) - len(parts) + 1, which wrongly assumes later "**"s
        # take a component each (restic PR #21948): "/a/**/b/**/c" misses "/a/b/c". We
        # implement the documented "zero or more", so the reference does too.
        for i in range(len(strs) - sum(p != "**" for p in parts) + 1):
            expanded = parts[:pos] + ["*"] * i + parts[pos + 1 :]
            if _restic_match(expanded, strs):
                return True
        return False
    if not parts or len(parts) > len(strs):
        return False
    min_off, max_off = 0, len(strs) - len(parts)
    if parts[0] == "/":
        max_off = 0
    elif strs[0] == "/":
        min_off = 1
    return any(
        all(fnmatch.fnmatchcase(strs[off + i], p) for i, p in enumerate(parts))
        for off in range(max_off, min_off - 1, -1)
    )


def restic_reference(patterns: list[str], path: str) -> bool:
    if not path:
        return False  # restic: ErrBadString, the path is not excluded
    matched = False
    for pattern in patterns:
        if not pattern:
            continue  # restic ignores empty patterns
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        parts = _split(_go_clean(body))
        # restic marks "**" as "", so the "" that splitting "/" leaves is a "**" too
        parts = parts[:1] + ["**" if p == "" else p for p in parts[1:]]
        m = _restic_match(parts, _split(path))
        matched = (matched and not m) if negated else (matched or m)
    return matched


def near_path(pattern: str, data: st.DataObject) -> str:
    """A path built from ``pattern``: glob components replaced by random ones, each "**" by
    zero to two components, and maybe components around it; so often a near miss or a hit."""
    comps: list[str] = []
    for c in pattern.split("/"):
        if c == "**":
            comps += data.draw(st.lists(path_component, max_size=2))
        elif c in ("", ".", ".."):
            continue
        elif any(ch in c for ch in "*?["):
            comps.append(data.draw(path_component))
        else:
            comps.append(c)
    if not pattern.startswith("/"):
        comps = data.draw(st.lists(path_component, max_size=2)) + comps
    comps += data.draw(st.lists(path_component, max_size=2))
    absolute = data.draw(st.booleans())
    return ("/" if absolute else "") + "/".join(comps) or "/"


@settings(max_examples=600)
@given(st.lists(st.tuples(st.booleans(), small_pattern), min_size=1, max_size=2), st.data())
def test_prop_agrees_with_restic_reference(
    specs: list[tuple[bool, str]], data: st.DataObject
) -> None:
    patterns = [("!" if neg else "") + p for neg, p in specs]
    if data.draw(st.booleans()):
        path = near_path(data.draw(st.sampled_from(patterns)).lstrip("!"), data)
    else:
        path = data.draw(small_path)
    assert posix(*patterns).excluded(path) is restic_reference(patterns, path)


@given(small_pattern, small_path, st.data())
def test_prop_windows_agrees_with_posix_modulo_case_and_separators(
    pattern: str, path: str, data: st.DataObject
) -> None:
    assume(not pattern.startswith("//"))  # a UNC root on Windows
    expected = posix(pattern).excluded(path)
    seps = data.draw(
        st.lists(st.sampled_from("/\\"), min_size=path.count("/"), max_size=path.count("/"))
    )
    upper = data.draw(st.lists(st.booleans(), min_size=len(path), max_size=len(path)))
    native = "".join(
        seps.pop() if c == "/" else (c.upper() if up else c)
        for c, up in zip(path, upper, strict=True)
    )
    win_pattern = data.draw(st.sampled_from([pattern, pattern.replace("/", "\\"), pattern.upper()]))
    assert win(win_pattern).excluded(native) is expected

"""API keys: the keys file's format, the ring's names, and the watcher that follows a real file."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from simpool_serve.service import preflight
from simpool_serve.service.key_file import KeyFileError, KeyFileWatcher, read_key_file
from simpool_serve.service.keys import KeyRing, parse_keys

# -- the file's format ----------------------------------------------------------------------------


def test_names_bare_keys_comments_and_blank_lines() -> None:
    text = "# rotated monthly\nops:0ps-k3y\n\n  bare-k3y  \r\nci.runner-2 : with:colon\n#old:gone\n"
    parsed = parse_keys(text)
    assert parsed.keys == (("ops", "0ps-k3y"), ("key4", "bare-k3y"), ("ci.runner-2", "with:colon"))
    assert parsed.problems == ()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("two words:k3y", "the name before ':' must be"),
        (":k3y", "the name before ':' must be"),
        ("none:k3y", "the name 'none' is reserved"),
        ("ops:", "no key after the name"),
        ("ops:two words", "the key holds a space"),
        ("a key with spaces", "the key holds a space"),
    ],
)
def test_a_bad_line_is_skipped_by_number_and_never_quoted(line: str, problem: str) -> None:
    parsed = parse_keys(f"good:g00d\n{line}\n")
    assert parsed.keys == (("good", "g00d"),)
    (said,) = parsed.problems
    assert said.startswith(f"line 2: {problem}")
    assert "k3y" not in said and "words" not in said


def test_a_repeated_key_keeps_its_first_name() -> None:
    parsed = parse_keys("ops:same\nci:other\nlater:same\n")
    assert parsed.keys == (("ops", "same"), ("ci", "other"))
    assert parsed.problems == ("line 3: the same key as line 1",)


# -- the ring -------------------------------------------------------------------------------------


def test_the_ring_names_each_key_and_keeps_the_default_through_rotations() -> None:
    ring = KeyRing("env-key", file_configured=True)
    ring.replace_file_keys([("ops", "a"), ("ops", "a2"), ("key3", "b")])
    assert [ring.name_of(t) for t in ("env-key", "a", "a2", "b", "nope", "")] == [
        "default", "ops", "ops", "key3", None, None,
    ]  # fmt: skip
    ring.replace_file_keys([("ci", "c")])
    assert [ring.name_of(t) for t in ("env-key", "a", "c")] == ["default", None, "ci"]
    assert ring.names() == ["ci", "default"]


def test_no_key_configured_requires_none() -> None:
    assert not KeyRing().required
    assert KeyRing("k").required and KeyRing(file_configured=True).required


# -- reading and following the file ---------------------------------------------------------------


def test_an_unreadable_or_keyless_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(preflight.ConfigError, match=r"SIMPOOL_API_KEYS_FILE .*missing: cannot read it"):
        preflight.check_api_keys_file(missing)
    empty = tmp_path / "empty"
    empty.write_text("# no key yet\n\n")
    with pytest.raises(KeyFileError, match="is empty: write one key per line"):
        read_key_file(empty)
    bad = tmp_path / "bad"
    bad.write_text("ops:\n")
    with pytest.raises(KeyFileError, match=r"holds no usable key \(line 1: no key after the name\)"):
        read_key_file(bad)
    preflight.check_api_keys_file(None)  # no file set: nothing to check


def _rewrite(path: Path, text: str) -> None:
    """Writes `text`, and moves the mtime on so that even a same-size rewrite is a visible change."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, max(stat.st_mtime_ns, before + 1_000_000)))


def test_the_watcher_rotates_and_keeps_the_keys_through_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text("ops:key-a\n")
    ring = KeyRing(file_configured=True)
    watcher = KeyFileWatcher(path, ring)
    watcher.load()
    assert ring.name_of("key-a") == "ops"

    _rewrite(path, "ops:key-b\n")
    watcher.poll()
    assert ring.name_of("key-a") is None and ring.name_of("key-b") == "ops"

    caplog.set_level(logging.WARNING, logger="simpool_serve.keys")
    for broken in ("", "# all keys commented out\n"):
        _rewrite(path, broken)
        for _ in range(3):  # polls of an unchanged file: one warning per change, not one per poll
            watcher.poll()
        assert ring.name_of("key-b") == "ops"
    path.unlink()
    watcher.poll()
    watcher.poll()
    assert ring.name_of("key-b") == "ops"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert "is empty" in warnings[0] and "cannot read it" in warnings[2]
    assert all("keeping the 1 key name(s) loaded before" in w for w in warnings)
    assert not any("key-b" in r.getMessage() for r in caplog.records)

    _rewrite(path, "key-c\nbad name:x\n")
    watcher.poll()
    assert ring.name_of("key-b") is None and ring.name_of("key-c") == "key1"
    assert "line 2: the name before ':'" in caplog.records[-1].getMessage()


def test_the_watch_loop_outlives_a_failing_check_and_stops_when_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text("ops:key-a\n")
    ring = KeyRing(file_configured=True)
    watcher = KeyFileWatcher(path, ring, poll_s=0.01)
    watcher.load()
    real_poll, calls = watcher.poll, []

    def failing_twice() -> None:  # a fault injected into the loop's check (say, a full thread pool)
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("injected")
        real_poll()

    watcher.poll = failing_twice  # type: ignore[method-assign]

    async def scenario() -> None:
        watcher.start()
        await asyncio.sleep(0.05)
        _rewrite(path, "ops:key-b\n")
        for _ in range(200):
            if ring.name_of("key-b") == "ops":
                break
            await asyncio.sleep(0.01)
        await watcher.stop()

    asyncio.run(scenario())
    assert ring.name_of("key-b") == "ops"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "checking the API keys file failed" in errors[0].getMessage()

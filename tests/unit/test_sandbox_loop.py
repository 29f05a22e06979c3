"""The command loop's end marker (sandboxes/loop.EndScanner): found however the output is cut,
never in output that merely resembles it; and what the loop refuses to frame."""

from __future__ import annotations

from agent_infra.env_manager.sandboxes import loop

SECRET = "agent-infra-end-" + "ab" * 16


def scan(data: bytes, step: int) -> tuple[bytes, int | None, bytes]:
    scanner = loop.EndScanner(SECRET)
    got = b""
    for start in range(0, len(data), step):
        got += scanner.feed(data[start:start + step])
    return got, scanner.code, scanner.feed(b"later")


def test_the_marker_ends_the_output_however_it_is_cut() -> None:
    marker = b"\x1e" + SECRET.encode() + b" 42\n"
    for body in (b"", b"no newline", b"line\n", b"\x1e\x1eagent-infra-end-", b"\x00" * 100):
        for step in (1, 2, 7, 4096):
            assert scan(body + marker + b"after", step) == (body, 42, b"")


def test_lookalikes_are_output() -> None:
    fake = b"\x1eagent-infra-end-" + b"cd" * 16 + b" 0\n"
    got, code, _ = scan(fake + b"x", 3)
    assert (got, code) == (fake + b"x", None)
    # Held back only while it could be the start of the marker.
    scanner = loop.EndScanner(SECRET)
    assert scanner.feed(b"text\n") == b"text\n"
    assert scanner.feed(b"ab\x1eagent") == b"ab"
    assert scanner.feed(b"-x") == b"\x1eagent-x"


def test_what_the_loop_does_not_frame() -> None:
    assert loop.fits(["true"], {"A": "x"}, "/tmp/sandbox", b"x" * loop.MAX_STDIN_BYTES) is None
    assert loop.fits(["true"], {}, "/tmp", b"x" * (loop.MAX_STDIN_BYTES + 1))
    assert loop.fits(["true"], {"A-B": "x"}, "/tmp", None)  # not a shell name
    assert loop.fits(["-c"], {}, "/tmp", None)
    assert loop.frame(["a b"], {}, "/w", None).startswith(b"3\n")

"""Progress output: live bars on a terminal, plain lines in logs, nothing when quiet."""

from __future__ import annotations

import io

from puller.progress import LiveReport, PlainReport, transfer_progress

DIGEST = "sha256:" + "ab" * 32


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    with transfer_progress(quiet=False, stream=out) as report:
        assert isinstance(report, PlainReport)
        for done in (0, 500, 1000):
            report(DIGEST, "downloading", done, 1000)
        report(DIGEST, "done", 1000, 1000)
        report("sha256:" + "cd" * 32, "exists", 20, 20)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # one line when a blob starts moving, not one per chunk
    assert lines[0] == "abababababab: downloading (1kB)"
    assert lines[1].startswith("abababababab: done (1kB")
    assert lines[2] == "cdcdcdcdcdcd: exists (20B)"


def test_live_bars_on_a_terminal() -> None:
    out = Terminal()
    with transfer_progress(quiet=False, stream=out) as report:
        assert isinstance(report, LiveReport)
        report(DIGEST, "downloading", 512 * 1024, 1024 * 1024)
        report(DIGEST, "done", 1024 * 1024, 1024 * 1024)
    screen = out.getvalue()
    assert "abababababab" in screen and "done" in screen and "1.0/1.0 MB" in screen


def test_quiet_reports_nothing() -> None:
    with transfer_progress(quiet=True, stream=io.StringIO()) as report:
        assert report is None

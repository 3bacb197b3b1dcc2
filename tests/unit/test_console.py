"""The shared terminal console: `terminate` stops, a command's own input goes to its handler,
anything else gets one hint line, and no input makes it raise."""

from __future__ import annotations

import io

from virtscale.console import read_console

HINT = "type 'terminate' to stop"


class Recorder:
    def __init__(self):
        self.stopped = 0
        self.said: list[str] = []
        self.handled: list[str] = []

    def stop(self) -> None:
        self.stopped += 1

    def numbers_only(self, command: str) -> bool:
        try:
            float(command)
        except ValueError:
            return False
        self.handled.append(command)
        return True


def run(data, handle=None) -> Recorder:
    recorder = Recorder()
    stream = io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)
    read_console(recorder.stop, HINT, handle=handle, say=recorder.said.append, stream=stream)
    return recorder


def test_terminate_calls_stop_and_ends_the_console():
    recorder = run("\n  terminate  \nnever read\n")
    assert recorder.stopped == 1
    assert recorder.said == [], "blank lines are ignored, and nothing after terminate is read"


def test_other_input_prints_one_hint_line_per_line():
    recorder = run("hello\nstop please\n")
    assert recorder.said == [HINT, HINT]
    assert recorder.stopped == 0, "the end of input is not a stop"


def test_the_command_handler_gets_what_it_understands_and_the_rest_gets_the_hint():
    recorder = Recorder()
    stream = io.StringIO("0.5\nfast\n2\nterminate\n")
    read_console(recorder.stop, HINT, handle=recorder.numbers_only, say=recorder.said.append, stream=stream)
    assert recorder.handled == ["0.5", "2"]
    assert recorder.said == [HINT]
    assert recorder.stopped == 1


def test_bytes_that_are_not_utf8_get_the_hint_instead_of_an_exception():
    recorder = run(b"\xff\xfe\x00junk\nterminate\n")
    assert recorder.said == [HINT]
    assert recorder.stopped == 1


def test_a_closed_stdin_ends_the_console_quietly():
    stream = io.StringIO("terminate\n")
    stream.close()
    recorder = Recorder()
    read_console(recorder.stop, HINT, say=recorder.said.append, stream=stream)
    assert recorder.stopped == 0 and recorder.said == []

"""Drive a real program on a pseudo-terminal (prompts, hidden password input), with bounded
waits: used for the admin menu and the client's interactive first run."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time


class Terminal:
    """The real program on a pseudo-terminal: wait for a prompt, then type an answer."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,  # no controlling terminal: getpass uses the pty on stdin
            close_fds=True,
        )
        os.close(slave)
        self.seen = ""  # everything read so far
        self._pos = 0  # where the next expect() starts looking

    def expect(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = self.seen.find(text, self._pos)
            if found >= 0:
                before = self.seen[self._pos : found]
                self._pos = found + len(text)
                return before
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"did not see {text!r}; output so far:\n{self.seen}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], min(timeout, 1.0))
        if not ready:
            return self.proc.poll() is None or timeout > 1.0
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the program closed the terminal
            return False
        self.seen += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
        return bool(chunk)

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def answer(self, prompt: str, line: str) -> None:
        self.expect(prompt)
        self.send(line)

    def finish(self, timeout: float = 15) -> int:
        try:
            rc = self.proc.wait(timeout)
            while self._read(0.2):
                pass
            return rc
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)

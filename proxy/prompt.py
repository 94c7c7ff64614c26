"""Ask for TOTP codes on the terminal without blocking the event loop."""

from __future__ import annotations

import asyncio
import termios
from typing import Final, TextIO

from proxy.credentials import HumanPasscodes, PasscodeSource
from proxy.errors import BadRequest

ONE_SHOT_WAIT: Final = 120.0


class TerminalPrompt:
    """Prints a prompt when a login needs a code and reads the answer from stdin.

    The event loop watches stdin for readability; a line is read only when the terminal has
    one ready, so nothing blocks. Lines typed while no login waits are ignored with a note.
    The code is not echoed while the prompt waits (as ssh does for verification codes).
    """

    def __init__(self, passcodes: HumanPasscodes, stdin: TextIO, out: TextIO) -> None:
        self._passcodes, self._stdin, self._out = passcodes, stdin, out
        self._loop = asyncio.get_running_loop()
        passcodes.on_needed.append(self._ask)
        self._loop.add_reader(stdin.fileno(), self._on_line)

    def close(self) -> None:
        """Stop watching stdin (and give the terminal its echo back)."""
        self._echo(on=True)
        self._loop.remove_reader(self._stdin.fileno())
        self._passcodes.on_needed.remove(self._ask)

    def _ask(self) -> None:
        self._echo(on=False)
        self._out.write("\nzcompute-proxy: enter the TOTP code from your authenticator: ")
        self._out.flush()

    def _echo(self, *, on: bool) -> None:
        try:
            attrs = termios.tcgetattr(self._stdin.fileno())
            attrs[3] = attrs[3] | termios.ECHO if on else attrs[3] & ~termios.ECHO
            termios.tcsetattr(self._stdin.fileno(), termios.TCSANOW, attrs)
        except (termios.error, OSError, ValueError):
            pass  # not a terminal (or already closed): nothing to hide

    def _on_line(self) -> None:
        line = self._stdin.readline()
        self._echo(on=True)
        self._out.write("\n")
        if not line:  # end of input: stop watching
            self._loop.remove_reader(self._stdin.fileno())
            return
        if not self._passcodes.waiting:
            self._out.write("zcompute-proxy: no code is needed right now\n")
            return
        try:
            self._passcodes.supply(line)
        except BadRequest as exc:
            self._out.write(f"zcompute-proxy: {exc.message}\n")
            self._ask()


NO_TERMINAL_HOW_TO = ("this command cannot ask for a TOTP code without a terminal: run it in a "
                      "terminal, or set ZCOMPUTE_TOTP_SECRET")


def for_one_shot(passcodes: PasscodeSource, stdin: TextIO, out: TextIO) -> TerminalPrompt | None:
    """Codes for a one-shot command (`check`, `token`): typed at a prompt when stdin is a
    terminal; otherwise a login that needs a code fails at once, saying why."""
    if not isinstance(passcodes, HumanPasscodes):
        return None
    if stdin.isatty():
        passcodes.configure(wait=ONE_SHOT_WAIT, how_to="type the code at the prompt")
        return TerminalPrompt(passcodes, stdin, out)
    passcodes.configure(wait=0.0, how_to=NO_TERMINAL_HOW_TO)
    return None

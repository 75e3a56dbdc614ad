"""The reader study's one-line error."""

from __future__ import annotations


class StudyError(SystemExit):
    """A study input or reader export that cannot be used; the message names the file and the problem.

    A SystemExit (like bundle.data.DatasetError) so the command line shows one line, `error: <file>: <problem>`,
    and exits with status 1 instead of a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message

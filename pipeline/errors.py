"""User-facing errors: one clear message and exit code 2, never a traceback.

The message goes to stderr, which lands in cron logs and terminals: anything identifier-shaped in
it (a column named after a person's e-mail address, a file name, a value) is masked here, once,
for every error the package raises.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or options. The CLI prints ``str(error)`` and exits 2."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: str | None = None):
        self.path = path
        self.line = line
        self.column = column
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f", line {line}"
            if column is not None:
                where += f", column {column!r}"
            where += ": "
        super().__init__(mask_message(where + message))


def mask_message(text: str) -> str:
    """``text`` with identifier-shaped parts masked (see ``pipeline.ingest.identifiers``)."""
    # Imported here: the identifier patterns live with ingest, which itself raises UserError.
    from pipeline.ingest.identifiers import mask_text

    return mask_text(text)

"""A result as a table: one description that ``print(result)``, a Markdown result file and the
command line's rich table all render, so the three never say different things."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ResultTable:
    """A titled table of text cells, with lines to show under it.

    Attributes:
        title: one line above the table.
        columns: the header cells.
        rows: one list of cells per row, as wide as ``columns``.
        notes: lines under the table (what a figure means, what was left out).
        align: one letter per column, ``l`` or ``r``; by default the first column left and
            the rest (figures) right.
    """

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    align: str = ""

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.columns) - 1)

    def markdown_table(self) -> str:
        """The table alone, in Markdown."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])

    def to_markdown(self) -> str:
        """The title, a blank line, then a Markdown table; the notes after another."""
        lines = [self.title, "", self.markdown_table()]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        """Plain text with aligned columns, for ``print``."""
        widths = [max(len(cell) for cell in column)
                  for column in zip(self.columns, *self.rows)]

        def line(cells: list[str]) -> str:
            return "  ".join(cell.ljust(width) if side == "l" else cell.rjust(width)
                             for cell, width, side in zip(cells, widths, self.alignment())
                             ).rstrip()

        return "\n".join([self.title, line(self.columns), *map(line, self.rows), *self.notes])

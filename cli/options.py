"""Options several commands share, declared once."""

import click

# keypoints and pairs: where the legacy CSVs and the table go.
TABLES_OUT = click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the legacy CSVs here and the table under OUT/tables (default: dataset root).",
)

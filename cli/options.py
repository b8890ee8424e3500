"""Options several commands share, declared once."""

import click

# keypoints and pairs: where the legacy CSVs and the table go.
TABLES_OUT = click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the legacy CSVs here and the table under OUT/tables (default: dataset root).",
)


class ExistingOrURI(click.ParamType):
    """A local file or directory that must exist (click.Path's checks, `path_kwargs`), or a
    storage URI kept as the string it is: a Path would mangle it, and the stage that opens
    it says what is missing there."""

    def __init__(self, **path_kwargs):
        self.path = click.Path(exists=True, **path_kwargs)
        kind = "DIR" if path_kwargs.get("file_okay") is False else "PATH"
        self.name = f"{'FILE' if path_kwargs.get('dir_okay') is False else kind}|URI"

    def convert(self, value, param, ctx):
        from pipeline.core import storage

        if storage.scheme(value) not in (None, "file"):
            return value
        return self.path.convert(value, param, ctx)

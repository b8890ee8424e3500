"""Options several commands share, declared once."""

import click

# keypoints and pairs: where the legacy CSVs and the table go.
TABLES_OUT = click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the legacy CSVs here and the table under OUT/tables (default: dataset root).",
)


class DirectoryOrURI(click.ParamType):
    """A local directory that must exist, or a storage URI kept as the string it is (a
    Path would mangle it; PipelineContext.check_location checks it with the config's
    storage settings)."""

    name = "DIR|URI"

    def convert(self, value, param, ctx):
        from pipeline.core import storage

        if storage.scheme(value) is not None:
            return value
        return click.Path(exists=True, file_okay=False).convert(value, param, ctx)

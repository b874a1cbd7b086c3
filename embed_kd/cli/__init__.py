"""The ``embed-kd`` command line: a thin click shell over the library.

Each command lives in its own module (``embed_kd/cli/<command>.py``), parses flags, calls the
library and renders the result. User mistakes surface as ``Error: <one sentence>`` and exit code 2
(see :func:`embed_kd.cli.common.run_command`), never as a traceback.
"""

from __future__ import annotations

import click

from embed_kd import __version__
from embed_kd.cli.common import OneLineErrors


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="embed-kd")
def main() -> None:
    """Distil cross-encoder and embedding teachers into small, fast query encoders.

    \b
    Stages:  score-teacher → train → eval → index build / serve
    Data:    --data takes a BEIR folder or a dataset name resolved under $EMBED_KD_DATA
    Models:  --model takes a local folder, a hub id, or a preset (embed-kd models)
    """


def _register() -> None:
    from embed_kd.cli import eval as eval_cmd
    from embed_kd.cli import export as export_cmd
    from embed_kd.cli import models as models_cmd
    from embed_kd.cli import report as report_cmd
    from embed_kd.cli import score_teacher as score_teacher_cmd
    from embed_kd.cli import index as index_cmd
    from embed_kd.cli import serve as serve_cmd
    from embed_kd.cli import train as train_cmd
    from embed_kd.cli import train_teacher as train_teacher_cmd
    from embed_kd.cli import publish as publish_cmd

    main.add_command(eval_cmd.eval_command)
    main.add_command(export_cmd.export_group)
    main.add_command(models_cmd.models_command)
    main.add_command(report_cmd.report_command)
    main.add_command(score_teacher_cmd.score_teacher_group)
    main.add_command(index_cmd.index_group)
    main.add_command(serve_cmd.serve_command)
    main.add_command(train_cmd.train_command)
    main.add_command(train_teacher_cmd.train_teacher_command)
    main.add_command(publish_cmd.publish_command)


_register()

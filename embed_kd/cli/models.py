"""``embed-kd models``: list model presets and where each would load from."""

from __future__ import annotations

import click

from embed_kd.cli.common import run_command


@click.command("models")
@run_command
def models_command() -> None:
    """List model presets (models/presets.yaml and $EMBED_KD_PRESETS)."""
    from embed_kd.presets import load_presets

    click.echo("| preset | kind | hub id | offline package | description |")
    click.echo("|---|---|---|---|---|")
    for name, p in sorted(load_presets().items()):
        click.echo(f"| {name} | {p.get('kind', 'bi-encoder')} | {p['hub_id']} | {p.get('offline_package') or '—'} | "
                   f"{p.get('description', '')} |")

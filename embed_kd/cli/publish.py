"""``embed-kd publish``: check a saved model folder, write its card, push it to the Hugging Face hub."""

from __future__ import annotations

import click

from embed_kd.cli.common import run_command, setup_logging, verbosity_options


@click.command("publish")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--repo-id", required=True, help="Hub repo to push to: OWNER/NAME (created if missing).")
@click.option("--dry-run", is_flag=True, help="Check and prepare the folder (card), print what would be uploaded; no network.")
@click.option("--eval", "eval_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An `embed-kd eval -o` / `eval --mteb -o` result JSON to put in the card (repeatable).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--include-checkpoints", is_flag=True, help="Also upload checkpoints/ (left out by default).")
@click.option("--commit-message", help="Hub commit message.")
@verbosity_options
@run_command
def publish_command(model_dir, repo_id, dry_run, eval_files, private, include_checkpoints, commit_message,
                    verbose, quiet) -> None:
    """Publish MODEL_DIR (saved by `embed-kd train` or `train-teacher`) to the hub as REPO_ID.

    \b
    embed-kd publish runs/scifact-l3 --repo-id me/scifact-l3 --eval runs/l3-asym.json --dry-run
    embed-kd publish runs/scifact-l3 --repo-id me/scifact-l3 --eval runs/l3-asym.json
    """
    from embed_kd.publish import prepare_publish, push

    setup_logging(verbose, quiet)
    plan = prepare_publish(model_dir, repo_id, eval_files=eval_files, include_checkpoints=include_checkpoints)
    click.echo(f"{plan.kind} {plan.folder} (fingerprint {plan.fingerprint}, manifest {plan.manifest.name}) "
               f"→ hub repo {plan.repo_id}")
    click.echo(f"model card: {plan.card}")
    click.echo(f"{len(plan.files)} files, {plan.total_bytes / 1e6:.1f} MB:")
    for rel, size in plan.files:
        click.echo(f"  {rel}  ({size:,} bytes)")
    if dry_run:
        click.echo("dry run: nothing uploaded")
        return
    url = push(plan, private=private, commit_message=commit_message)
    click.echo(f"uploaded: {url}")

"""`--help` explains every option of every command (the CLI contract)."""

import click

from lowprec.cli import main


def commands(group: click.Group, prefix: str = ""):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def test_every_option_has_help_text():
    found = list(commands(main))
    assert len(found) > 10
    missing = [f"{name} {param.opts[0]}" for name, cmd in found for param in cmd.params
               if isinstance(param, click.Option) and param.opts[0] != "--help" and not (param.help or "").strip()]
    assert not missing, f"options without help text: {missing}"

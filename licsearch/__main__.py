"""``python -m licsearch`` runs the CLI."""

from .cli.main import entry

entry()

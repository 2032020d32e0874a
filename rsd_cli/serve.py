"""`rsd serve` and `rsd worker`: defined with the service (service/cli.py), added to the `rsd` tree here."""

from service.cli import add_parsers

__all__ = ["add_parsers"]

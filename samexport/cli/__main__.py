"""``python -m samexport.cli``."""

from samexport.cli import app

app()

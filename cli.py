"""Run the samexport command line from a checkout: ``python cli.py build --variant vit_b``."""

from samexport.cli import app

if __name__ == "__main__":
    app()

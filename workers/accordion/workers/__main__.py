"""`python -m accordion.workers`: the data-plane commands without the root CLI (worker images)."""

from accordion.workers.cli import app

if __name__ == "__main__":
    app()

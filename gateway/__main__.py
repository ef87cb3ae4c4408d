"""``python -m gateway`` runs the CLI."""

from gateway.cli.main import main

if __name__ == "__main__":
    main()

"""`python -m app` and the frozen executable's entry point."""

from app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m hulurt.serve BUNDLE [--host 127.0.0.1] [--port 8000] ...`"""

from hulurt.serve.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

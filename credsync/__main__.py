"""The `credsync` command and `python -m credsync`."""

import sys

from credsync.slim_process import keep_out_unused_libraries


def main() -> int:
    keep_out_unused_libraries()  # the CLI lets TLS back in when its settings need it
    # Imported only now: the line above must come before the CLI's imports.
    from credsync.cli import main as run_cli

    return run_cli()


if __name__ == "__main__":
    sys.exit(main())

"""A workspace process for the local driver's tests: an HTTP server with optional quirks.

python workspace_server.py --port N [--say TEXT] [--dump-env FILE] [--ignore-sigterm]
                           [--exit-with CODE] [--no-listen]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--say", default=None, help="print this line before serving")
    parser.add_argument("--dump-env", default=None, help="write the environment here as JSON")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--exit-with", type=int, default=None, help="exit at once with this code")
    parser.add_argument("--no-listen", action="store_true", help="run but never open the port")
    args = parser.parse_args()

    if args.say:
        print(args.say, flush=True)
    if args.dump_env:
        with open(args.dump_env, "w") as file:
            json.dump(dict(os.environ), file)
    if args.exit_with is not None:
        sys.exit(args.exit_with)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.no_listen:
        threading.Event().wait()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), SimpleHTTPRequestHandler)
    print(f"serving on {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

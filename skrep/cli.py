"""The ``skrep`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skrep", description="Explain models by their training points.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small network on digits and explain it")
    demo.add_argument("--quick", action="store_true", help="train for fewer epochs")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(quick=args.quick, random_state=args.seed)
    except (ValueError, TypeError, OSError) as e:
        if args.debug:
            raise
        print(f"skrep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skrep: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

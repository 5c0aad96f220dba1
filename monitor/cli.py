"""The `thermostat` command line.

Each subcommand lives in `monitor.commands.<name>` and is imported only when
it runs, so `thermostat --help` and the API role stay light. Expected errors
(`ThermostatError`, a missing file) print one line and exit 1; argparse
usage errors print one line too (`OneLineParser`) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from monitor import __version__
from monitor.errors import ThermostatError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("monitor.commands.serve", "run the sidecar (proxy, API, scheduler, worker)"),
    "db": ("monitor.commands.db", "inspect or migrate the database schema"),
    "model-server": (
        "monitor.commands.model_server",
        "serve a local transformers model (OpenAI-compatible, raw logprobs)",
    ),
    "evaluate": ("monitor.commands.evaluate", "evaluate metrics and alert rules once, now"),
    "demo": ("monitor.commands.demo", "run the whole loop on the embedded default"),
    "calibrate": ("monitor.commands.calibrate", "fit a calibration from a labelled JSONL set"),
}


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr, exit 2.

    The contract wants one-line errors from every command; argparse's default
    prints the whole usage block above the message. `--help` is untouched.
    Subcommand parsers are built with this class too (`parser_class`), so the
    whole tree, `thermostat db`'s actions included, behaves the same.
    """

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())  # a type's message may span lines
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="thermostat",
        description="Calibration monitoring and recalibration for deployed language models.",
    )
    parser.add_argument("--version", action="version", version=f"thermostat {__version__}")
    # Not `required`: argparse would report a missing COMMAND before an unknown
    # option (`thermostat --bogus`); main() checks both, unknown options first.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        # `parser` lets main() report a stray argument against its command.
        command_parser.set_defaults(handler=module.run, parser=command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # parse_args() would blame `thermostat` for `thermostat serve --bogus` and
    # point at the top-level help; the command's parser names the command.
    args, unknown = parser.parse_known_args(argv)
    command_parser = getattr(args, "parser", parser)
    if unknown:
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error("the following arguments are required: COMMAND")
    try:
        result = args.handler(args)
    except ThermostatError as exc:
        print(f"thermostat {args.command}: error: {exc.message}", file=sys.stderr)
        return 1
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"thermostat {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())

"""MkDocs hook: the CLI reference (docs/cli.md) is generated at build time from the argparse
parser (``sparse_bnn.cli.build_parser``), so it cannot drift from the command.

docs/cli.md holds the marker ``<!-- cli-reference -->``; this hook replaces it with one section
per subcommand: its description, its usage line and a table of its options per option group.
"""
from __future__ import annotations

import argparse
import html

MARKER = "<!-- cli-reference -->"


def _cell(text: str) -> str:
    return html.escape(" ".join(str(text).split())).replace("|", "&#124;")


def _help(action: argparse.Action, prog: str) -> str:
    """The action's help text with argparse's ``%(default)s``-style fields filled in."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = {**vars(action), "prog": prog}
    params = {key: getattr(value, "__name__", value) for key, value in params.items()}
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    try:
        return action.help % params
    except (KeyError, TypeError, ValueError):
        return action.help


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool) or action.required:
        return ""
    return _code(action.default)


def _code(text: str) -> str:
    return f"<code>{_cell(text)}</code>"


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        return _code(action.metavar or action.dest)
    takes_value = action.nargs != 0
    metavar = action.metavar or (action.dest.upper() if takes_value else "")
    if action.choices is not None and not action.metavar:
        metavar = "NAME"
    names = ", ".join(_code(name) for name in action.option_strings)
    return f"{names} {_code(metavar)}" if takes_value and metavar else names


def _actions_table(actions: list[argparse.Action], prog: str) -> list[str]:
    rows = ["| option | default | description |", "|---|---|---|"]
    for action in actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        text = _help(action, prog)
        if action.choices is not None and action.option_strings:
            text += f" (one of: {', '.join(map(str, action.choices))})"
        rows.append(f"| {_option(action)} | {_default(action)} | {_cell(text)} |")
    return rows if len(rows) > 2 else []


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=76)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def _parser_section(parser: argparse.ArgumentParser, level: str, summary: str | None) -> list[str]:
    lines = [f"{level} `{parser.prog}`", ""]
    description = parser.description or summary
    if description:
        lines += [" ".join(description.split()), ""]
    lines += ["```text", _usage(parser), "```", ""]
    for group in parser._action_groups:
        table = _actions_table(group._group_actions, parser.prog)
        if not table:
            continue
        title = group.title or "options"
        lines += [f"**{title}**", "", *table, ""]
    return lines


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """Markdown for ``parser`` and each of its subcommands, in the order they were added."""
    lines = _parser_section(parser, "##", None)
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            lines += _parser_section(sub, "##", summaries.get(name))
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from sparse_bnn.cli import build_parser
    return markdown.replace(MARKER, cli_reference(build_parser()))

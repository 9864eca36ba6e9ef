"""The ``batchvid`` command line: a thin layer over the library.

This is the only place that prints, exits or imports click.  Library errors
become messages and exit codes in one place, :meth:`_Group.invoke`:

- 0 success; 1 the batch finished with jobs that did not succeed;
- 2 usage error or invalid manifest; 3 the API refused the key (401);
- 130 interrupted, ledger consistent.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import __version__
from ..catalogue import short_name
from ..errors import AuthError, BatchvidError, ManifestError, ServiceRefused
from ..text import clip
from .common import Exit, print_issues

if TYPE_CHECKING:
    from ..manifest.plan import Plan

__all__ = ["cli", "main"]

#: Commands defined in other modules, imported only when they run (or --help lists
#: them): ``status`` loads the ledger alone, not the HTTP stack, YAML or the runner.
_LAZY_COMMANDS = {
    "run": "run",
    "status": "ledger",
    "retry": "ledger",
    "ledger": "ledger",
    "report": "report",
    "simulator": "simulator",
}
#: Commands that talk HTTP, and so retry (and log retries) through stamina.
_NETWORK_COMMANDS = frozenset({"run", "simulator"})


class _Group(click.Group):
    """Turns library errors into messages and exit codes, in one place; loads commands lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _LAZY_COMMANDS:
            module = import_module(f".{_LAZY_COMMANDS[cmd_name]}", __package__)
            self.add_command(getattr(module, cmd_name))
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ManifestError as exc:
            print_issues(exc.issues)
            errors = sum(1 for i in exc.issues if i.severity == "error")
            click.echo(
                f"{errors} error{'s' if errors != 1 else ''}: nothing was submitted", err=True
            )
            ctx.exit(Exit.USAGE)
        except AuthError as exc:
            click.echo(f"error: the API refused the key ({exc}); check COMETAPI_KEY", err=True)
            ctx.exit(Exit.AUTH)
        except ServiceRefused as exc:
            click.echo(
                f"error: the API refused to create videos ({exc}). That is the endpoint or the "
                "account, not a job: check --base-url / COMETAPI_BASE_URL and the account's "
                "balance. No job was marked rejected; run again once it is fixed.",
                err=True,
            )
            ctx.exit(Exit.USAGE)
        except BatchvidError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(Exit.USAGE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchvid")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log retries and downloads (-v), or every request (-vv), to stderr.",
)
def cli(verbose: int) -> None:
    """Generate Seedance videos in bulk on CometAPI, from a YAML manifest.

    \b
    Typical night:
      batchvid validate lookbook.yaml     check every job against the model limits
      batchvid plan lookbook.yaml         see the jobs, output seconds and cost
      batchvid run lookbook.yaml          submit, poll and download (resumable)
      batchvid status                     counts per state, from the ledger
      batchvid report --format html       a gallery of what came out
    """
    _configure_logging(verbose, click.get_current_context().invoked_subcommand)


def _configure_logging(verbose: int, command: str | None) -> None:
    """Quiet by default: the run's own display says what matters.

    Retries are routine (a 503, a 429) and the runner reports what they lead
    to; -v shows them, -vv shows every request.
    """
    import logging

    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    if command in _NETWORK_COMMANDS:
        import stamina.instrumentation

        # None restores stamina's own logging hook; an empty list silences it.
        stamina.instrumentation.set_on_retry_hooks(None if verbose else ())


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Write a starter batch into DIRECTORY (default: here): manifest.yaml, whose
    comments explain every field, and prompts.csv, a small prompt file.

    Both validate as written, and `batchvid run DIRECTORY/manifest.yaml
    --simulate` runs them (8 jobs). Existing files are never overwritten: if
    either exists, nothing is written and the exit code is 2.
    """
    from ..manifest.starter import STARTER_FILES

    targets = [directory / name for name in STARTER_FILES]
    there = [str(t) for t in targets if t.exists() or t.is_symlink()]
    if there:
        raise click.UsageError(
            f"{' and '.join(there)} already exist{'s' if len(there) == 1 else ''}: nothing "
            "was written (init never overwrites; choose another directory)"
        )
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for target, content in zip(targets, STARTER_FILES.values(), strict=True):
            with target.open("x", encoding="utf-8") as out:  # "x": fails if it appeared
                written.append(target)
                out.write(content)
    except OSError as exc:
        for path in written:  # all or nothing
            path.unlink(missing_ok=True)
        where = exc.filename or directory
        raise click.UsageError(f"cannot write {where}: {exc.strerror or exc}") from exc
    manifest = targets[0]
    click.echo(f"wrote {' and '.join(str(t) for t in targets)}")
    click.echo(f"next: batchvid plan {manifest}")
    click.echo(f"      batchvid run {manifest} --simulate   (the built-in simulator)")
    click.echo(f"      batchvid run {manifest}              (CometAPI: export COMETAPI_KEY)")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=str))
def validate(manifest: str) -> None:
    """Check MANIFEST against the documented model limits; submit nothing.

    Every error is reported at once as FILE:LINE: field: message on stderr.
    Warnings (such as an exact WxH size the docs do not list for a model)
    are printed too but do not fail. Exit 0 when valid, 2 when not.
    """
    from ..manifest.plan import load_plan

    plan = load_plan(manifest)
    print_issues(plan.warnings)
    t = plan.totals
    merged = f", {t.merged_duplicates} identical requests merged" if t.merged_duplicates else ""
    jobs = f"{t.jobs} job{'s' if t.jobs != 1 else ''}"
    click.echo(f"{manifest}: valid: {jobs}, {t.output_seconds} output seconds{merged}")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the whole plan as JSON.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=40,
    show_default=True,
    help="Jobs to list in the table (0: all). JSON always lists all.",
)
def plan(manifest: str, as_json: bool, limit: int) -> None:
    """Show the jobs MANIFEST expands to, with totals and the cost estimate.

    Nothing is sent. The table lists each job's index, key, prompt, model,
    seconds, size and resolution; the totals give jobs, output seconds,
    identical requests merged, per-model figures and the estimated cost when
    the manifest has `pricing`. Exit 2 if the manifest is invalid.
    """
    from ..manifest.plan import load_plan

    result = load_plan(manifest)
    print_issues(result.warnings)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        return
    click.echo(_render_plan(result, limit))


def _render_plan(plan: Plan, limit: int) -> str:
    lines = [f"batch {plan.batch}  ({plan.manifest.file})", ""]
    shown = plan.jobs if limit == 0 else plan.jobs[:limit]
    headers = ("#", "key", "prompt", "vars", "take", "model", "s", "size", "res", "refs")
    api = {"model", "seconds", "size", "resolution", "input_reference"}
    rows = [
        (
            str(j.index),
            j.key[:10],
            clip((f"[{j.prompt_id}] " if j.prompt_id else "") + j.prompt, 44),
            clip(" ".join(f"{k}={v}" for k, v in j.axes if k not in api), 24),
            str(j.take),
            short_name(j.model),
            str(j.seconds),
            j.size,
            j.resolution,
            str(len(j.references)) if j.references else "",
        )
        for j in shown
    ]
    lines.extend(_table(headers, rows))
    if len(shown) < len(plan.jobs):
        lines.append(f"... and {len(plan.jobs) - len(shown)} more (--limit 0 lists all)")
    t = plan.totals
    lines.append("")
    lines.append(f"jobs {t.jobs}   output seconds {t.output_seconds}")
    if t.merged_duplicates:
        lines.append(
            f"{t.merged_duplicates} identical requests merged into existing jobs "
            "(same prompt, settings and take)"
        )
        for merge in plan.merges[:5]:
            axes = ", ".join(f"{k}={v}" for k, v in merge.axes) or "no matrix"
            lines.append(f"  {merge.path} ({axes}, take {merge.take}) = job #{merge.same_as}")
    model_rows = [
        (model, str(m.jobs), str(m.seconds), _usd(m.cost_usd) if plan.manifest.pricing else "")
        for model, m in sorted(t.by_model.items())
    ]
    lines.append("")
    lines.extend(_table(("model", "jobs", "seconds", "est. cost"), model_rows))
    if plan.manifest.pricing:
        cost = _usd(t.cost_usd)
        if t.unpriced_models:
            cost += f" (no price for {', '.join(t.unpriced_models)})"
        budget = f" of budget {_usd(t.budget_usd)}" if t.budget_usd is not None else ""
        lines.append(f"estimated cost {cost}{budget}")
    return "\n".join(lines)


def _usd(value: float | None) -> str:
    return "?" if value is None else f"${value:,.2f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    out.extend(fmt.format(*row).rstrip() for row in rows)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="batchvid")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])

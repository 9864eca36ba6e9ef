"""``batchvid simulator``: serve the built-in CometAPI simulator until Ctrl-C.

The main CLI registers this command with ``cli.add_command(simulator)``.  Every
knob of :class:`~batchvid.sim.config.SimConfig` is a flag; its help text comes
from :data:`~batchvid.sim.config.KNOB_HELP`, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..sim.config import KNOB_HELP, SimConfig
from ..sim.server import Simulator, run_simulator

__all__ = ["simulator"]

_F = TypeVar("_F", bound=Callable[..., Any])
_DEFAULTS = SimConfig()
_SHARE = click.FloatRange(0.0, 1.0)
_SECONDS = click.FloatRange(min=0.0)


def _knob(name: str, type_: Any = None) -> Callable[[_F], _F]:
    """A ``--name`` flag for knob ``name`` (``--name/--no-name`` for a yes/no knob),
    documented from KNOB_HELP."""
    default = getattr(_DEFAULTS, name)
    flag = "--" + name.replace("_", "-")
    if isinstance(default, bool):
        flag = f"{flag}/--no-{flag[2:]}"
    return click.option(
        flag,
        name,
        type=type_,
        default=default,
        show_default=default is not None,
        help=KNOB_HELP[name] + ".",
    )


@click.command(
    "simulator",
    epilog=(
        "Point batchvid (or curl) at the printed base URL with the printed key; "
        "`batchvid run --simulate` starts its own simulator in-process instead. "
        "Admin routes (no key needed, never counted): GET /_sim/stats, "
        "GET|POST /_sim/config (JSON knobs), POST /_sim/inject "
        '(e.g. {"server_error": 2, "truncate": 1, "drop_after_create": 1, '
        '"cdn_error": 1, "expire": 1, "ignore_range": 1, "content_redirect": 1, '
        '"corrupt": 1}), '
        "POST /_sim/reset."
    ),
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8787, show_default=True, type=int, help="API port.")
@click.option(
    "--cdn-port",
    type=int,
    default=None,
    help="Port of the CDN that serves signed video URLs (another origin) [default: port+1].",
)
@_knob("api_key")
@_knob("vocabulary", click.Choice(["upper", "lower", "mixed"]))
@_knob("error_shape", click.Choice(["openai", "flat", "mixed"]))
@_knob("time_scale", _SECONDS)
@_knob("spread", _SHARE)
@_knob("progress", click.Choice(["curve", "linear", "coarse", "none"]))
@_knob("completed_at", click.Choice(["seconds", "absent", "created"]))
@_knob("fail_rate", _SHARE)
@_knob("error_rate", _SHARE)
@_knob("hang_rate", _SHARE)
@_knob("hang_factor", click.FloatRange(min=1.0))
@_knob("vanish_rate", _SHARE)
@_knob("corrupt_rate", _SHARE)
@_knob("rate_limit", click.IntRange(min=0))
@_knob("rate_window", click.FloatRange(min=0.0, min_open=True))
@_knob("retry_after", _SECONDS)
@_knob("retry_after_style", click.Choice(["seconds", "date", "none"]))
@_knob("p_5xx", _SHARE)
@_knob("p_drop_after_create", _SHARE)
@_knob("create_delay", _SECONDS)
@_knob("poll_delay", _SECONDS)
@_knob("cdn_delay", _SECONDS)
@_knob("p_truncate", _SHARE)
@_knob("url_ttl", _SECONDS)
@_knob("p_cdn_error", _SHARE)
@_knob("p_ignore_range", _SHARE)
@_knob("p_content_redirect", _SHARE)
@_knob("video_url")
@_knob("content")
@_knob("seed", int)
def simulator(host: str, port: int, cdn_port: int | None, **knobs: Any) -> None:
    """Run a local CometAPI simulator (the documented Seedance video API).

    It validates creates like the real API, renders on a simulated clock,
    serves small playable MP4s (distinct per task) from signed, expiring URLs
    on a separate CDN port, and injects the faults batchvid must survive.
    """
    try:
        config = SimConfig(**knobs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"warning: listening on {host}; the admin routes need no key and anyone "
            "who can reach this address can use them",
            err=True,
        )

    def ready(sim: Simulator) -> None:
        click.echo(f"CometAPI simulator  {sim.base_url}")
        click.echo(f"  API key           {sim.api_key}")
        click.echo(f"  CDN (video URLs)  {sim.cdn_url}")
        click.echo(f"  admin             {sim.admin_url}/stats  (no key; not counted)")
        click.echo(
            f"  use it with       COMETAPI_BASE_URL={sim.base_url} COMETAPI_KEY={sim.api_key}"
        )
        click.echo("Ctrl-C stops it.")

    try:
        run_simulator(config, host, port, cdn_port, on_ready=ready)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    click.echo("simulator stopped")

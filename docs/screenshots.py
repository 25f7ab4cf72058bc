"""Regenerate the console's screenshots in docs/screenshots/, at 80×24 and at 160×48.

Each screen is reached as a user would, by its keys, in a console headless against the fake
agent that the console's tests use, with the clock stopped at the fixtures' "now": run it
again and the pictures come out the same unless the console changed.

    .venv/bin/python docs/screenshots.py [--only NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp.connector
from textual.pilot import Pilot

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "console_fixtures"), str(ROOT / "src")]

import scenes  # noqa: E402

SIZES = ((80, 24), (160, 48))
OUT = Path(__file__).resolve().parent / "screenshots"


def shoot(scene: scenes.Scene, size: tuple[int, int]) -> str:
    """The SVG of one screen at one size."""
    app = scenes.console()
    taken: list[str] = []

    async def take(pilot: Pilot) -> None:
        await scene.reach(pilot)
        taken.append(app.export_screenshot(title=f"Prove AI · {scene.title}"))
        app.exit()

    app.run(headless=True, size=size, auto_pilot=take)
    if not taken:
        raise RuntimeError(f"{scene.name} at {size[0]}x{size[1]}: no screenshot was taken")
    return taken[0]


def freeze_clock() -> None:
    """Stop the console's clock at the fixtures' now, for ages and delivery times."""
    for name in scenes.CLOCK_READERS:
        # setattr: mypy knows no `datetime` on a module object.
        setattr(sys.modules[name], "datetime", scenes.FrozenClock)  # noqa: B010


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(scenes.SCENES), metavar="NAME")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT.name}/")
    args = parser.parse_args(argv)

    os.environ[scenes.ACTOR_ENV] = scenes.ACTOR
    os.environ.pop("NO_COLOR", None)
    freeze_clock()
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [scenes.SCENES[name] for name in args.only or scenes.SCENES]
    with scenes.running_agent() as agent:
        aiohttp.connector.DefaultResolver = scenes.resolver_factory(agent.port)  # type: ignore[assignment]
        for scene in chosen:
            for width, height in SIZES:
                path = args.out / f"{scene.name}-{width}x{height}.svg"
                path.write_text(shoot(scene, (width, height)))
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

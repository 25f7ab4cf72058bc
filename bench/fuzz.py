"""Hostile input for minutes: the fuzzing of tests/test_fuzz.py against an agent subprocess.

Rounds of every family of hostile request (random, mutated and hostile protobuf, JSON,
unknown encodings, a 1 GiB gzip bomb, heavy 1 MiB bodies, and every JSON API body route)
go to a `proveai-agent serve` subprocess until the time is up. Each answer is checked as the
tests check it: a 5xx is a server error, an agent that stops answering `/healthz` (or
exits) is a crash, and a wrong status, a refused request that stored something or an
accepted span not stored is a problem. The agent's resident memory (VmRSS) is read after
the first round, once its caches are warm, and at the end.

    python bench/fuzz.py [--seconds 120] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent / "tests"), str(_HERE.parent / "src")]
from common import KEY, peak_rss_mb, start_agent  # noqa: E402
from test_fuzz import (  # noqa: E402
    CONTENT_TYPES,
    PROTOBUF,
    ROUTES,
    SETTINGS,
    WRONG_CONTENT_TYPES,
    ApiRequest,
    OtlpRequest,
    Target,
    api_bodies,
    check_api,
    check_otlp,
    deep_json,
    gzip_bomb,
    heavy_requests,
    hostile_protobuf,
    json_bodies,
    mutated_protobuf,
    open_case,
    random_protobuf,
    seed,
    send,
    well_formed_protobuf,
)

KINDS = ("server_error", "crash")
"""Problems counted on their own; every other kind is counted under `other`."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def encodings() -> st.SearchStrategy[OtlpRequest]:
    return st.one_of(
        st.builds(OtlpRequest, st.binary(max_size=512), st.sampled_from(WRONG_CONTENT_TYPES)),
        st.builds(
            OtlpRequest,
            st.binary(max_size=512),
            st.sampled_from(CONTENT_TYPES),
            st.just(False),
            st.sampled_from(["br", "deflate", "gzip, br", "x-gzip"]),
        ),
        st.sampled_from([100_000]).map(
            lambda depth: OtlpRequest(deep_json(depth, "object"), "application/json")
        ),
    )


class Tally:
    """Examples and problems per family."""

    def __init__(self) -> None:
        self.examples: Counter[str] = Counter()
        self.problems: dict[str, Counter[str]] = {}
        self.seconds: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def record(self, family: str, problems: list[str]) -> None:
        self.examples[family] += 1
        counts = self.problems.setdefault(family, Counter())
        for problem in problems:
            kind = problem.split(":", 1)[0]
            counts[kind if kind in KINDS else "other"] += 1
            self.first.setdefault(kind, problem[:400])

    def total(self, kind: str) -> int:
        return sum(counts[kind] for counts in self.problems.values())


def run_family(
    tally: Tally,
    family: str,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], list[str]],
    examples: int,
) -> None:
    started = time.monotonic()

    @settings(max_examples=examples, **SETTINGS)
    @given(item=strategy)
    def fuzz(item: Any) -> None:
        tally.record(family, check(item))

    fuzz()
    tally.seconds[family] += time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="one short round")
    args = parser.parse_args()
    seconds = 0.0 if args.quick else args.seconds
    per_round = 20 if args.quick else 100

    agent = start_agent()
    target = Target(
        agent.url,
        agent.data_dir / "proveai.db",
        lambda: agent.proc.poll() is None,
        key=KEY,
    )
    tally = Tally()
    try:
        seed(target)
        case_id = open_case(target)["id"]

        def otlp(request: OtlpRequest) -> list[str]:
            return check_otlp(target, request)

        families: list[tuple[str, st.SearchStrategy[Any], Callable[[Any], list[str]], int]] = [
            ("protobuf random", random_protobuf(), otlp, per_round),
            ("protobuf mutated", mutated_protobuf(), otlp, per_round),
            ("protobuf well formed", well_formed_protobuf(), otlp, per_round),
            ("protobuf hostile", hostile_protobuf(), otlp, per_round // 2),
            ("json", json_bodies(), otlp, per_round),
            ("encodings", encodings(), otlp, per_round // 4),
            ("heavy 1 MiB", heavy_requests(), otlp, per_round // 4),
        ]
        for route, (path, fields, ok) in ROUTES.items():
            paths = st.sampled_from([case_id, case_id, "CASE-999999"]).map(
                lambda c, path=path: path.format(case=c)
            )
            strategy = st.builds(ApiRequest, paths, api_bodies(fields))
            families.append(
                (
                    f"api {route}",
                    strategy,
                    lambda request, ok=ok: check_api(target, request, case_id, ok),
                    per_round // 2,
                )
            )

        bomb = gzip_bomb(1 << 30)
        rss_warm = None
        deadline = time.monotonic() + seconds
        rounds = 0
        while True:
            for family, strategy, check, examples in families:
                if target.alive():
                    run_family(tally, family, strategy, check, examples)
            status = send(
                target,
                "POST",
                "/v1/traces",
                bomb,
                **{"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
            )[0]
            tally.record("gzip bomb 1 GiB", [] if status == 413 else [f"other: {status}"])
            rounds += 1
            if rss_warm is None and target.alive():
                rss_warm = rss_mb(agent.proc.pid)
            if time.monotonic() >= deadline or not target.alive():
                break
        alive = target.alive()
        rss_end = rss_mb(agent.proc.pid) if alive else float("nan")
        peak = peak_rss_mb(agent.proc.pid) if alive else float("nan")
    finally:
        agent.stop()

    crashes = tally.total("crash") + (0 if alive else 1)
    print(f"{'family':<22} {'examples':>9} {'5xx':>5} {'crash':>6} {'other':>6} {'s':>7}")
    for family in tally.examples:
        counts = tally.problems.get(family, Counter())
        print(
            f"{family:<22} {tally.examples[family]:>9} {counts['server_error']:>5} "
            f"{counts['crash']:>6} {counts['other']:>6} {tally.seconds[family]:>7.1f}"
        )
    for kind, problem in tally.first.items():
        print(f"first {kind}: {problem}")
    growth = rss_end - (rss_warm or float("nan"))
    print(
        f"rounds {rounds}; agent RSS after round 1 {rss_warm:.1f} MiB, at the end "
        f"{rss_end:.1f} MiB, peak {peak:.1f} MiB"
    )
    print(
        f"examples={sum(tally.examples.values())} server_errors={tally.total('server_error')}"
        f" crashes={crashes} rss_growth_mb={growth:.1f} other_problems={tally.total('other')}"
    )


if __name__ == "__main__":
    main()

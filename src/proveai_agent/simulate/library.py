"""The scenario library: labelled failure stories, one folder each under `scenarios/`.

A scenario folder holds `scenario.toml`: the ground truth (failure class, root-cause id,
the fix that resolves it and the PromQL that shows it fixed), the fault the simulator
injects at the onset, and the changes it plays before and around it: deploy markers
posted to the agent, edits of the files in the simulated services' workspace, and
attribute values that change on the spans. Exactly one change is the planted cause; the
others are unrelated. The files the edits apply to start as the copy in
`scenarios/_workspace/<service>/`.

Times in a scenario are seconds relative to the onset, negative before it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from proveai_agent.simulate.faults import Effect, Fault

LIBRARY = Path(__file__).parent / "scenarios"
WORKSPACE = LIBRARY / "_workspace"
FAILURE_CLASSES = (
    "HALLUCINATION",
    "RETRIEVAL_DRIFT",
    "COHERENCE_DEGRADATION",
    "AGENT_LOOP",
    "LATENCY_REGRESS",
    "CONTEXT_OVERFLOW",
    "PROMPT_REGRESSION",
    "TOKEN_EXPLOSION",
)
SERVICES = ("rag-api", "research-agent")
"""The simulated services; any other service named in a scenario only gets markers."""
COMPARATORS = ("<", "<=", ">", ">=")
CHANGE_KINDS = ("deploy", "file", "attribute")
DEFAULT_ONSET_S = 180.0
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_EFFECT_FIELDS = {f.name for f in fields(Effect)} - {"failure", "attributes"}


class ScenarioError(ValueError):
    """A scenario file that does not describe a runnable scenario; says where and why."""


def suffixed(service: str, suffix: str | None) -> str:
    """The service's name in a run with `--service-suffix`."""
    return f"{service}-{suffix}" if suffix else service


@dataclass(frozen=True, slots=True)
class PlannedChange:
    """A change the scenario plays at `at_s` (seconds from the onset).

    deploy: a marker posted to the agent with `summary` and `version`. file: an edit of
    `path` (relative to the service's workspace folder) that replaces text or appends.
    attribute: spans matching `span` (an operation name or span name) carry `key=value`
    from then on; the planted attribute change is part of the fault instead and ends with
    it.
    """

    at_s: float
    kind: str
    service: str
    summary: str = ""
    planted: bool = False
    version: str | None = None
    path: str | None = None
    replace: tuple[tuple[str, str], ...] = ()
    append: str | None = None
    span: str | None = None
    key: str | None = None
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """The PromQL that shows the fix held: `query comparator threshold` over `window_s`."""

    query: str
    comparator: str
    threshold: float
    window_s: int

    def for_run(self, suffix: str | None) -> Verification:
        """The query with `{rag}` and `{agent}` filled in with a run's service names."""
        filled = self.query.replace("{rag}", suffixed("rag-api", suffix)).replace(
            "{agent}", suffixed("research-agent", suffix)
        )
        return Verification(filled, self.comparator, self.threshold, self.window_s)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One labelled failure story and its ground truth."""

    name: str
    failure_class: str
    root_cause: str
    service: str
    description: str
    fault_label: str
    effect: Effect
    fix: str
    verification: Verification
    changes: tuple[PlannedChange, ...]
    onset_s: float = DEFAULT_ONSET_S
    folder: Path = field(default=LIBRARY)

    @property
    def planted(self) -> PlannedChange:
        return next(change for change in self.changes if change.planted)

    def fault(self, onset_s: float, suffix: str | None, stop_s: float | None) -> Fault:
        """The scenario's fault for a run whose onset is `onset_s` seconds in."""
        effect = self.effect
        planted = self.planted
        if planted.kind == "attribute":
            assert planted.span and planted.key and planted.value is not None
            effect = Effect(
                **{f.name: getattr(effect, f.name) for f in fields(Effect)}
                | {
                    "attributes": (
                        *effect.attributes,
                        (planted.span, planted.key, planted.value),
                    )
                }
            )
        return Fault(
            "scenario",
            start_s=onset_s,
            stop_s=stop_s,
            service=suffixed(self.service, suffix),
            custom=effect,
            label=self.fault_label,
        )


@cache
def scenarios() -> dict[str, Scenario]:
    """Every scenario in the library, by name, in name order."""
    found: dict[str, Scenario] = {}
    for path in sorted(LIBRARY.glob("*/scenario.toml")):
        if path.parent.name.startswith("_"):
            continue
        scenario = load(path)
        found[scenario.name] = scenario
    return found


def load(path: Path) -> Scenario:
    """Read and check one scenario file; raises ScenarioError with what is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ScenarioError(f"{path}: {error}") from error
    where = str(path)
    name = path.parent.name
    if not SLUG.match(name):
        raise ScenarioError(f"{where}: folder name {name!r} is not a lowercase slug")
    failure_class = _str(data, "class", where)
    if failure_class not in FAILURE_CLASSES:
        raise ScenarioError(f"{where}: class {failure_class!r} is not a failure class")
    root_cause = _str(data, "root_cause", where)
    if not SLUG.match(root_cause):
        raise ScenarioError(f"{where}: root_cause {root_cause!r} is not a lowercase slug")
    service = _str(data, "service", where)
    if service not in SERVICES:
        raise ScenarioError(f"{where}: service must be one of {', '.join(SERVICES)}")

    fault = _table(data, "fault", where)
    label = _str(fault, "label", f"{where} [fault]")
    effect = _effect(fault, f"{where} [fault]")
    fix = _str(_table(data, "fix", where), "action", f"{where} [fix]")
    verification = _verification(_table(data, "verification", where), f"{where} [verification]")
    changes = tuple(
        _change(item, f"{where} [[changes]] #{index + 1}")
        for index, item in enumerate(data.get("changes", []))
    )
    planted = [change for change in changes if change.planted]
    if len(planted) != 1:
        raise ScenarioError(
            f"{where}: exactly one change must be planted, found {len(planted)}"
        )
    if len(changes) - 1 < 2:
        raise ScenarioError(f"{where}: at least two unrelated changes are needed")
    if planted[0].service != service:
        raise ScenarioError(f"{where}: the planted change must be on {service}")
    onset = data.get("onset_s", DEFAULT_ONSET_S)
    if not isinstance(onset, int | float) or onset <= 0:
        raise ScenarioError(f"{where}: onset_s must be a positive number")
    return Scenario(
        name=name,
        failure_class=failure_class,
        root_cause=root_cause,
        service=service,
        description=_str(data, "description", where),
        fault_label=label,
        effect=effect,
        fix=fix,
        verification=verification,
        changes=tuple(sorted(changes, key=lambda change: change.at_s)),
        onset_s=float(onset),
        folder=path.parent,
    )


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ScenarioError(f"{where}: {key} must be a non-empty string")
    return value


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: [{key}] is missing")
    return value


def _effect(fault: dict[str, Any], where: str) -> Effect:
    values: dict[str, Any] = {}
    for key, value in fault.items():
        if key == "label":
            continue
        if key not in _EFFECT_FIELDS:
            raise ScenarioError(f"{where}: unknown effect {key!r}")
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ScenarioError(f"{where}: {key} must be a number of 0 or more")
        values[key] = value
    effect = Effect(**values)
    if effect == Effect():
        raise ScenarioError(f"{where}: the fault changes nothing")
    return effect


def _verification(table: dict[str, Any], where: str) -> Verification:
    comparator = _str(table, "comparator", where)
    if comparator not in COMPARATORS:
        raise ScenarioError(f"{where}: comparator must be one of {' '.join(COMPARATORS)}")
    threshold = table.get("threshold")
    window = table.get("window_s")
    if not isinstance(threshold, int | float) or isinstance(threshold, bool):
        raise ScenarioError(f"{where}: threshold must be a number")
    if not isinstance(window, int) or window <= 0:
        raise ScenarioError(f"{where}: window_s must be a positive integer")
    return Verification(_str(table, "query", where), comparator, float(threshold), window)


def _change(item: Any, where: str) -> PlannedChange:
    if not isinstance(item, dict):
        raise ScenarioError(f"{where}: must be a table")
    kind = _str(item, "kind", where)
    if kind not in CHANGE_KINDS:
        raise ScenarioError(f"{where}: kind must be one of {', '.join(CHANGE_KINDS)}")
    at_s = item.get("at_s")
    if not isinstance(at_s, int | float) or isinstance(at_s, bool):
        raise ScenarioError(f"{where}: at_s must be a number")
    service = _str(item, "service", where)
    planted = item.get("planted", False)
    if not isinstance(planted, bool):
        raise ScenarioError(f"{where}: planted must be true or false")
    change = PlannedChange(at_s=float(at_s), kind=kind, service=service, planted=planted)
    if kind == "deploy":
        return _with(change, summary=_str(item, "summary", where), version=item.get("version"))
    if kind == "file":
        path = _str(item, "path", where)
        if path.startswith("/") or ".." in Path(path).parts:
            raise ScenarioError(f"{where}: path must stay inside the workspace")
        if not (WORKSPACE / service / path).is_file():
            raise ScenarioError(f"{where}: no workspace file {service}/{path}")
        replace = item.get("replace", [])
        if not isinstance(replace, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            for pair in replace
        ):
            raise ScenarioError(f"{where}: replace must be a list of [old, new] pairs")
        original = (WORKSPACE / service / path).read_text()
        for old, _ in replace:
            if old not in original:
                raise ScenarioError(f"{where}: {old!r} is not in {service}/{path}")
        append = item.get("append")
        if append is not None and not isinstance(append, str):
            raise ScenarioError(f"{where}: append must be a string")
        if not replace and not append:
            raise ScenarioError(f"{where}: a file change needs replace or append")
        return _with(
            change,
            path=path,
            replace=tuple((old, new) for old, new in replace),
            append=append,
        )
    if service not in SERVICES:
        raise ScenarioError(f"{where}: attributes change only on {', '.join(SERVICES)}")
    return _with(
        change,
        span=_str(item, "span", where),
        key=_str(item, "key", where),
        value=_str(item, "value", where),
    )


def _with(change: PlannedChange, **values: Any) -> PlannedChange:
    return PlannedChange(**{f.name: getattr(change, f.name) for f in fields(change)} | values)

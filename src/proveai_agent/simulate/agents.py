"""The simulated multi-agent service `research-agent`: planner, web search, research, synthesis.

Agent and tool spans use the current GenAI conventions (`invoke_agent`, `execute_tool`,
`gen_ai.agent.name`). The model calls use the names older instrumentations still send:
`gen_ai.system` for the provider, `gen_ai.usage.prompt_tokens`/`completion_tokens`, and
prompts and completions as `gen_ai.content.prompt`/`gen_ai.content.completion` events.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from proveai_agent.simulate import (
    MS,
    PlannedEvent,
    PlannedSpan,
    between_ms,
    estimate_tokens,
    lognormal_ms,
    mark_failed,
    random_id,
)
from proveai_agent.simulate.faults import NO_EFFECT, Effect

SERVICE = "research-agent"
VERSION = "0.9.0"

PLANNER_MODEL = "gpt-4o"
RESEARCH_MODEL = "gpt-4o-mini"
SYNTHESIS_MODEL = "gpt-4o"
RESPONSE_MODELS = {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18"}

CONTEXT_WINDOW = 128_000
"""The context window of both models, in tokens."""
HEALTHY_TOOL_ERROR_RATIO = 0.003
"""Share of web searches that time out on a healthy day; the planner carries on without them."""

AGENTS = {
    "planner": "Breaks a research task into web searches",
    "research": "Reads search results and takes notes with sources",
    "synthesis": "Writes the final answer from the research notes",
}

PLANNER_PROMPT = (
    "You plan research. Call web_search once per distinct angle of the task, at most "
    "three times, with short precise queries."
)
RESEARCH_PROMPT = "Extract the facts relevant to the task from these results, with sources."
SYNTHESIS_PROMPT = "Write a concise, sourced answer to the task from the research notes."


@dataclass(frozen=True, slots=True)
class Task:
    """A research task, the searches the planner may run for it, and the final answer."""

    text: str
    searches: tuple[str, str, str]
    answer: str


TASKS: tuple[Task, ...] = (
    Task(
        "How well do air-source heat pumps work below -15 °C?",
        (
            "air source heat pump COP at -15 C field data",
            "cold climate heat pump defrost energy penalty",
            "heat pump backup resistance heating share Nordic homes",
        ),
        "Cold-climate units keep a COP of about 2 at -15 °C; defrost cycles cost 5–10 % "
        "and backup heating covers only the coldest hours.",
    ),
    Task(
        "Compare LFP and NMC batteries for home storage.",
        (
            "LFP vs NMC cycle life stationary storage",
            "LFP thermal runaway onset temperature",
            "home battery price per kWh LFP NMC",
        ),
        "LFP lasts roughly twice as many cycles and is more tolerant of heat; NMC is "
        "denser but that matters little on a wall.",
    ),
    Task(
        "What limits the size of offshore wind turbines?",
        (
            "offshore wind blade length limits materials",
            "installation vessel crane capacity turbine size",
            "turbine size levelized cost of energy trend",
        ),
        "Blade mass and stiffness, installation vessels and grid connections limit size "
        "more than aerodynamics do.",
    ),
    Task(
        "Which index types do vector databases use and what do they trade off?",
        (
            "HNSW vs IVF recall latency benchmark",
            "product quantization memory vector search",
            "DiskANN SSD based vector index",
        ),
        "HNSW gives the best recall at low latency but needs memory; IVF-PQ compresses "
        "vectors at some recall cost; DiskANN moves the graph to SSD.",
    ),
    Task(
        "How do cities reduce urban heat islands?",
        (
            "cool roofs surface temperature reduction study",
            "urban tree canopy cooling effect",
            "permeable pavement heat island mitigation",
        ),
        "Cool roofs, tree canopy and water-permeable surfaces each lower surface "
        "temperatures; trees cool streets the most.",
    ),
)


class AgentSystem:
    """Plans `research-agent` traces; the same seed gives the same sequence of traces."""

    version = VERSION

    def __init__(self, seed: int, service: str = SERVICE) -> None:
        self.service = service
        self._traces = random.Random(f"{seed}/{SERVICE}")

    def next_trace(self, effect: Effect = NO_EFFECT) -> PlannedSpan:
        """The next `invoke_agent planner` trace, with `effect` applied to its chat calls."""
        return plan_task(random.Random(self._traces.getrandbits(64)), effect)


class _Calls:
    """Plans the trace's model calls with the active effect; remembers whether one failed."""

    def __init__(self, rng: random.Random, effect: Effect) -> None:
        self.rng = rng
        self.effect = effect
        self.failed = False
        self.overflow_roll = rng.random()

    def chat(
        self,
        model: str,
        start_ns: int,
        median_ms: float,
        prompt: list[dict[str, str]],
        completion: str,
        tokens: tuple[int, int],
        finish_reason: str = "stop",
        token_factor: float = 1.0,
        overflow: bool = False,
    ) -> PlannedSpan:
        """One model call; `token_factor` multiplies its output, `overflow` fills its
        context window so that the answer is cut off."""
        rng = self.rng
        fault_roll = rng.random()
        latency_jitter = rng.uniform(0.85, 1.15)
        duration_ns = lognormal_ms(rng, median_ms, 0.35, median_ms / 2, median_ms * 2.5)
        if self.effect.latency_factor != 1.0:
            duration_ns = int(duration_ns * self.effect.latency_factor * latency_jitter)
        if token_factor != 1.0:
            tokens = (tokens[0], round(tokens[1] * token_factor))
            duration_ns = int(duration_ns * (0.3 + 0.7 * token_factor))
        if overflow:
            used = int(CONTEXT_WINDOW * rng.uniform(0.93, 0.995))
            tokens = (used, CONTEXT_WINDOW - used)
            finish_reason = "length"

        span = PlannedSpan(
            f"chat {model}",
            "client",
            start_ns,
            start_ns + duration_ns,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": model,
                "gen_ai.request.temperature": 0.3,
                "server.address": "api.openai.com",
                "server.port": 443,
            },
            [
                PlannedEvent(
                    "gen_ai.content.prompt", start_ns, {"gen_ai.prompt": json.dumps(prompt)}
                )
            ],
        )
        if fault_roll < self.effect.error_ratio:
            self.failed = True
            span.end_ns = start_ns + lognormal_ms(rng, 180, 0.4, 60, 600)
            span.attributes["http.response.status_code"] = self.effect.failure.status_code
            mark_failed(span, self.effect.failure.error_type, self.effect.failure.message)
            return span

        span.attributes.update(
            {
                "gen_ai.response.model": RESPONSE_MODELS[model],
                "gen_ai.response.id": f"chatcmpl-{random_id(rng, 24)}",
                "gen_ai.response.finish_reasons": [finish_reason],
                "gen_ai.usage.prompt_tokens": tokens[0],
                "gen_ai.usage.completion_tokens": tokens[1],
            }
        )
        completion_json = json.dumps([{"role": "assistant", "content": completion}])
        span.events.append(
            PlannedEvent(
                "gen_ai.content.completion", span.end_ns, {"gen_ai.completion": completion_json}
            )
        )
        return span


def plan_task(rng: random.Random, effect: Effect = NO_EFFECT) -> PlannedSpan:
    """One task through the agents: plan, search, research, synthesise."""
    calls = _Calls(rng, effect)
    task = rng.choice(TASKS)
    conversation = f"conv_{random_id(rng, 16)}"
    searches = rng.sample(task.searches, rng.randint(1, 3))
    results = "\n".join(f"- {query}" for query in searches)

    root = _agent("planner", PLANNER_MODEL, conversation, 0)
    plan = calls.chat(
        PLANNER_MODEL,
        between_ms(rng, 1, 5),
        900,
        [{"role": "system", "content": PLANNER_PROMPT}, {"role": "user", "content": task.text}],
        json.dumps([{"name": "web_search", "arguments": {"query": q}} for q in searches]),
        (estimate_tokens(PLANNER_PROMPT + task.text) + 160, 18 + 14 * len(searches)),
        finish_reason="tool_calls",
    )
    root.children.append(plan)
    if calls.failed:
        return _fail_agent(rng, root, effect)

    tools = [_web_search(rng, query, plan.end_ns + _gap(rng)) for query in searches]
    root.children += tools
    cursor = max(tool.end_ns for tool in tools) + _gap(rng)
    if effect.tool_error_retries:
        failing = tools[0]
        _fail_search(failing)
        cursor = _repeat_search(
            rng, calls, root, task, searches[0], cursor, effect.tool_error_retries, True
        )
    if effect.loop_repeats:
        repeats = effect.loop_repeats + rng.randint(0, 3)
        cursor = _repeat_search(rng, calls, root, task, searches[0], cursor, repeats, False)
    if calls.failed:
        return _fail_agent(rng, root, effect)

    research = _agent("research", RESEARCH_MODEL, conversation, cursor)
    root.children.append(research)
    notes_tokens = 0
    for index in range(rng.randint(1, 2)):
        start = research.children[-1].end_ns + _gap(rng) if index else cursor + _gap(rng)
        output_tokens = rng.randint(150, 420)
        notes_tokens += output_tokens
        research.children.append(
            calls.chat(
                RESEARCH_MODEL,
                start,
                1300,
                [
                    {"role": "system", "content": RESEARCH_PROMPT},
                    {"role": "user", "content": f"Task: {task.text}\nResults:\n{results}"},
                ],
                f"Notes on: {'; '.join(searches)}",
                (rng.randint(1400, 3200), output_tokens),
                overflow=calls.overflow_roll < effect.overflow_ratio,
            )
        )
        if calls.failed:
            _close_agent(rng, research, failed=True)
            return _fail_agent(rng, root, effect)
    _close_agent(rng, research, failed=False)

    synthesis = _agent("synthesis", SYNTHESIS_MODEL, conversation, research.end_ns + _gap(rng))
    root.children.append(synthesis)
    synthesis.children.append(
        calls.chat(
            SYNTHESIS_MODEL,
            synthesis.start_ns + _gap(rng),
            2400,
            [
                {"role": "system", "content": SYNTHESIS_PROMPT},
                {"role": "user", "content": f"Task: {task.text}\nNotes on:\n{results}"},
            ],
            task.answer,
            (
                estimate_tokens(SYNTHESIS_PROMPT + task.text) + notes_tokens,
                rng.randint(280, 650),
            ),
            token_factor=effect.output_token_factor,
        )
    )
    _close_agent(rng, synthesis, failed=calls.failed)
    if calls.failed:
        return _fail_agent(rng, root, effect)
    _close_agent(rng, root, failed=False)
    return root


def _repeat_search(
    rng: random.Random,
    calls: _Calls,
    root: PlannedSpan,
    task: Task,
    query: str,
    cursor: int,
    times: int,
    failing: bool,
) -> int:
    """The planner asks for the same search again, `times` times; returns where it ends.

    With `failing` every repeat fails as the first did (a tool error the planner retries).
    """
    arguments = json.dumps([{"name": "web_search", "arguments": {"query": query}}])
    for _ in range(times):
        again = calls.chat(
            PLANNER_MODEL,
            cursor,
            600,
            [
                {"role": "system", "content": PLANNER_PROMPT},
                {"role": "user", "content": task.text},
            ],
            arguments,
            (estimate_tokens(PLANNER_PROMPT + task.text) + 260, 32),
            finish_reason="tool_calls",
        )
        root.children.append(again)
        if calls.failed:
            return again.end_ns
        search = _web_search(rng, query, again.end_ns + _gap(rng))
        if failing:
            _fail_search(search)
        root.children.append(search)
        cursor = search.end_ns + _gap(rng)
    return cursor


def _fail_search(span: PlannedSpan) -> None:
    """The search backend answers 503: the call fails fast with no results."""
    span.end_ns = span.start_ns + (span.end_ns - span.start_ns) // 6
    span.attributes.pop("gen_ai.tool.call.result", None)
    span.events = [event for event in span.events if event.name != "exception"]
    span.attributes.pop("error.type", None)
    mark_failed(span, "SearchBackendError", "search backend returned 503")


def _gap(rng: random.Random) -> int:
    return between_ms(rng, 0.5, 4.0)


def _agent(name: str, model: str, conversation: str, start_ns: int) -> PlannedSpan:
    return PlannedSpan(
        f"invoke_agent {name}",
        "internal",
        start_ns,
        start_ns,
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": name,
            "gen_ai.agent.id": f"agent_{name}",
            "gen_ai.agent.description": AGENTS[name],
            "gen_ai.system": "openai",
            "gen_ai.request.model": model,
            "gen_ai.conversation.id": conversation,
        },
    )


def _close_agent(rng: random.Random, agent: PlannedSpan, failed: bool) -> None:
    agent.end_ns = max(child.end_ns for child in agent.children) + between_ms(rng, 0.5, 3.0)
    if failed:
        agent.error = "model call failed"


def _fail_agent(rng: random.Random, root: PlannedSpan, effect: Effect) -> PlannedSpan:
    _close_agent(rng, root, failed=True)
    root.error = f"model call failed: {effect.failure.message}"
    root.attributes["error.type"] = effect.failure.error_type
    return root


def _web_search(rng: random.Random, query: str, start_ns: int) -> PlannedSpan:
    offset = between_ms(rng, 0, 15)
    fails = rng.random() < HEALTHY_TOOL_ERROR_RATIO
    duration = 5000 * MS if fails else lognormal_ms(rng, 450, 0.5, 150, 1500)
    span = PlannedSpan(
        "execute_tool web_search",
        "internal",
        start_ns + offset,
        start_ns + offset + duration,
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "web_search",
            "gen_ai.tool.type": "function",
            "gen_ai.tool.description": "Searches the web and returns the top results",
            "gen_ai.tool.call.id": f"call_{random_id(rng, 24)}",
            "gen_ai.tool.call.arguments": json.dumps({"query": query, "max_results": 5}),
        },
    )
    if fails:
        mark_failed(span, "TimeoutError", "web search timed out after 5 s")
        return span
    slug = "-".join(query.split()[:4]).lower()
    results = [
        {"title": query.capitalize(), "url": f"https://{site}/{slug}"}
        for site in rng.sample(("example.org", "example.com", "example.net"), 2)
    ]
    span.attributes["gen_ai.tool.call.result"] = json.dumps(results)
    return span

"""The simulated RAG service `rag-api`: embed the question, search, rerank, answer, score.

Spans follow the current OpenTelemetry GenAI conventions (`gen_ai.provider.name`,
`gen_ai.usage.input_tokens`, messages as `gen_ai.input.messages` attributes). The
content is a support assistant for an invented e-bike maker.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

from proveai_agent.simulate import (
    MS,
    PlannedEvent,
    PlannedSpan,
    between_ms,
    estimate_tokens,
    input_messages,
    lognormal_ms,
    mark_failed,
    output_messages,
    random_id,
)
from proveai_agent.simulate.faults import NO_EFFECT, Effect

SERVICE = "rag-api"
VERSION = "1.4.2"

EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384
RERANK_MODEL = "ms-marco-minilm-l-6-v2"
CHAT_MODEL = "gpt-4o-mini"
CHAT_RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
COLLECTION = "orbit-kb-v3"
PROMPT_NAME = "orbit-answer"
PROMPT_VERSION = "7"
CONTEXT_WINDOW = 128_000
"""The chat model's context window in tokens."""
TOP_K = 4
TOP_N = 3
CHAT_MIN_MS = 400
CHAT_MAX_MS = 1600
"""A healthy chat call takes between these, before any injected latency."""

HEALTHY_RETRIEVAL_ERROR_RATIO = 0.002
"""Share of vector searches that time out on a healthy day."""
RETRIEVAL_TIMEOUT_MS = 2000
STREAM_RATIO = 0.3
"""Share of chat calls that stream their answer."""
STREAM_WITHOUT_USAGE_RATIO = 0.25
"""Share of streamed calls made without usage reporting, so their token counts are unknown."""

SYSTEM_PROMPT = (
    "You are Orbit's support assistant. Answer only from the context below and cite the "
    "chunk ids you used. If the context does not contain the answer, say so."
)

CHUNKS: dict[str, str] = {
    "battery-care#1": (
        "Charge the Orbit battery between 10 °C and 30 °C. A full charge from empty takes "
        "about 4.5 hours with the standard 4 A charger."
    ),
    "battery-care#2": (
        "Store the battery at 40–60 % charge if the bike stays unused for more than a month, "
        "and top it up every eight weeks."
    ),
    "battery-care#3": (
        "Capacity drops by about 20 % after 800 full cycles; the warranty covers capacity "
        "below 70 % within two years."
    ),
    "display-errors#1": (
        "Error E07 means the motor controller lost contact with the torque sensor. Check the "
        "connector under the bottom bracket cover."
    ),
    "display-errors#2": (
        "Error E12 signals battery over-temperature. Stop riding, let the battery cool for "
        "30 minutes, then restart the system."
    ),
    "firmware#1": (
        "Firmware updates install from the Orbit app: open Bike > Settings > Firmware and "
        "keep the phone within 2 m until the bike restarts."
    ),
    "firmware#2": (
        "An update that stops at 99 % resumes after the bike is switched off for ten seconds "
        "and the update is started again."
    ),
    "warranty#1": (
        "The frame is covered for 10 years, the motor and battery for two years or "
        "20,000 km, whichever comes first."
    ),
    "warranty#2": (
        "Warranty claims need the frame number, printed under the bottom bracket, and a "
        "photo of the receipt."
    ),
    "assist#1": (
        "Assist levels Eco, Tour and Boost add 50 %, 120 % and 250 % of rider effort; Boost "
        "roughly halves the range."
    ),
    "assist#2": (
        "Range in Eco mode is 90–140 km depending on rider weight, tyre pressure and "
        "temperature."
    ),
    "brakes#1": (
        "Replace the hydraulic brake pads when less than 1.5 mm of material remains; use "
        "organic resin pads only."
    ),
}


@dataclass(frozen=True, slots=True)
class Question:
    """A user question, the chunks that answer it, and the assistant's answer."""

    text: str
    relevant: tuple[str, ...]
    answer: str


QUESTIONS: tuple[Question, ...] = (
    Question(
        "How long does a full battery charge take?",
        ("battery-care#1",),
        "About 4.5 hours from empty with the standard 4 A charger; charge it between "
        "10 °C and 30 °C [battery-care#1].",
    ),
    Question(
        "What does error E07 on the display mean?",
        ("display-errors#1",),
        "E07 means the motor controller lost contact with the torque sensor. Check the "
        "connector under the bottom bracket cover [display-errors#1].",
    ),
    Question(
        "How should I store the battery over winter?",
        ("battery-care#2", "battery-care#1"),
        "Keep it at 40–60 % charge and top it up every eight weeks [battery-care#2].",
    ),
    Question(
        "My firmware update is stuck at 99 %, what should I do?",
        ("firmware#2", "firmware#1"),
        "Switch the bike off for ten seconds and start the update again from the app, "
        "keeping the phone within 2 m [firmware#2][firmware#1].",
    ),
    Question(
        "How long is the motor under warranty?",
        ("warranty#1", "warranty#2"),
        "Two years or 20,000 km, whichever comes first. Claims need the frame number and "
        "the receipt [warranty#1][warranty#2].",
    ),
    Question(
        "What range can I expect in Eco mode?",
        ("assist#2", "assist#1"),
        "Between 90 and 140 km, depending on your weight, tyre pressure and the "
        "temperature [assist#2].",
    ),
    Question(
        "When do I need new brake pads?",
        ("brakes#1",),
        "When less than 1.5 mm of pad material remains; use organic resin pads [brakes#1].",
    ),
    Question(
        "Is battery capacity loss covered by the warranty?",
        ("battery-care#3", "warranty#1"),
        "Yes, if capacity falls below 70 % within two years [battery-care#3][warranty#1].",
    ),
)

USER_AGENTS = (
    "orbit-app/3.2.1 (iOS 17.5)",
    "orbit-app/3.2.0 (Android 14)",
    "orbit-web/2024.11",
)


class RagPipeline:
    """Plans `rag-api` traces; the same seed gives the same sequence of traces."""

    version = VERSION

    def __init__(self, seed: int, service: str = SERVICE) -> None:
        self.service = service
        self._traces = random.Random(f"{seed}/{SERVICE}")

    def next_trace(self, effect: Effect = NO_EFFECT) -> PlannedSpan:
        """The next `POST /query` trace, with `effect` applied to its chat call."""
        return plan_query(random.Random(self._traces.getrandbits(64)), effect)


@dataclass(frozen=True, slots=True)
class Rolls:
    """The random draws that decide which of the active effects hit one request.

    Drawn first and always in the same order, so a seed gives the same healthy traffic
    whatever effects are active.
    """

    fault: float
    latency_jitter: float
    miss: float
    ungrounded: float
    incoherent: float
    off_instruction: float
    overflow: float

    @classmethod
    def draw(cls, rng: random.Random) -> Rolls:
        return cls(
            rng.random(),
            rng.uniform(0.85, 1.15),
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
        )


def plan_query(rng: random.Random, effect: Effect = NO_EFFECT) -> PlannedSpan:
    """One request through the pipeline: five spans, or three when the search times out."""
    rolls = Rolls.draw(rng)
    retrieval_fails = rng.random() < HEALTHY_RETRIEVAL_ERROR_RATIO
    question = rng.choice(QUESTIONS)
    missed = rolls.miss < effect.retrieval_miss_ratio

    embed = _embed(rng, question, start_ns=between_ms(rng, 0.3, 1.5))
    documents = _search(rng, question, missed)
    retrieve = _retrieve(
        rng,
        question,
        documents,
        embed.end_ns + _gap(rng),
        retrieval_fails,
        effect.retrieval_latency_factor,
    )
    root = _root(rng, [embed, retrieve])
    if retrieval_fails:
        return _finish_root(rng, root, 504, "vector search timed out")

    reranked = _rerank_order(rng, question, documents)
    rerank = _rerank(rng, documents, reranked, retrieve.end_ns + _gap(rng))
    fails = rolls.fault < effect.error_ratio
    factor = effect.latency_factor
    if factor != 1.0:
        factor *= rolls.latency_jitter
    answer = Answer(
        text=question.answer if not missed else MISSED_ANSWER,
        token_factor=effect.output_token_factor,
        overflow=rolls.overflow < effect.overflow_ratio,
    )
    chat = _chat(rng, question, reranked, rerank.end_ns + _gap(rng), factor, answer)
    root.children += [rerank, chat]
    if fails:
        _fail_chat(rng, chat, effect)
        return _finish_root(rng, root, 502, f"model call failed: {effect.failure.message}")

    quality = Quality(
        missed=missed,
        ungrounded=rolls.ungrounded < effect.ungrounded_ratio,
        incoherent=rolls.incoherent < effect.incoherent_ratio,
        off_instruction=rolls.off_instruction < effect.off_instruction_ratio,
    )
    _add_evaluations(rng, chat, quality)
    return _finish_root(rng, root, 200, None)


def _gap(rng: random.Random) -> int:
    return between_ms(rng, 0.2, 2.0)


def _root(rng: random.Random, children: list[PlannedSpan]) -> PlannedSpan:
    return PlannedSpan(
        "POST /query",
        "server",
        0,
        0,
        {
            "http.request.method": "POST",
            "http.route": "/query",
            "url.path": "/query",
            "url.scheme": "http",
            "server.address": "rag-api.orbit.internal",
            "server.port": 8080,
            "network.protocol.version": "1.1",
            "user_agent.original": rng.choice(USER_AGENTS),
        },
        children=children,
    )


def _finish_root(
    rng: random.Random, root: PlannedSpan, status_code: int, error: str | None
) -> PlannedSpan:
    root.end_ns = root.children[-1].end_ns + between_ms(rng, 0.5, 4.0)
    root.attributes["http.response.status_code"] = status_code
    if error is not None:
        root.error = error
        root.attributes["error.type"] = str(status_code)
    return root


def _embed(rng: random.Random, question: Question, start_ns: int) -> PlannedSpan:
    return PlannedSpan(
        "embed query",
        "client",
        start_ns,
        start_ns + lognormal_ms(rng, 34, 0.3, 20, 60),
        {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.provider.name": "local",
            "gen_ai.request.model": EMBEDDING_MODEL,
            "gen_ai.response.model": EMBEDDING_MODEL,
            "gen_ai.embeddings.dimension.count": EMBEDDING_DIMENSIONS,
            "gen_ai.request.encoding_formats": ["float"],
            "gen_ai.usage.input_tokens": estimate_tokens(question.text),
            "server.address": "embedder.orbit.internal",
            "server.port": 8081,
        },
    )


@dataclass(frozen=True, slots=True)
class Document:
    """A retrieved chunk with its score, as it appears in `gen_ai.retrieval.documents`."""

    id: str
    content: str
    score: float


def _search(rng: random.Random, question: Question, missed: bool = False) -> list[Document]:
    """The top-k chunks by vector similarity: the relevant ones first, then near misses.

    A search that `missed` (a stale index, query vectors from another embedding model)
    returns near misses only, at lower similarity.
    """
    others = [chunk for chunk in CHUNKS if chunk not in question.relevant]
    misses = rng.sample(others, TOP_K - len(question.relevant))
    hit_scores = sorted((rng.uniform(0.78, 0.94) for _ in question.relevant), reverse=True)
    miss_scores = sorted((rng.uniform(0.42, 0.68) for _ in misses), reverse=True)
    if missed:
        chosen = rng.sample(others, TOP_K)
        scores = sorted((rng.uniform(0.31, 0.55) for _ in chosen), reverse=True)
        return [
            Document(chunk, CHUNKS[chunk], round(score, 4))
            for chunk, score in zip(chosen, scores, strict=True)
        ]
    return [
        Document(chunk, CHUNKS[chunk], round(score, 4))
        for chunk, score in zip(
            [*question.relevant, *misses], hit_scores + miss_scores, strict=True
        )
    ]


def _retrieve(
    rng: random.Random,
    question: Question,
    documents: list[Document],
    start_ns: int,
    fails: bool,
    latency_factor: float = 1.0,
) -> PlannedSpan:
    duration = RETRIEVAL_TIMEOUT_MS * MS if fails else lognormal_ms(rng, 60, 0.4, 30, 120)
    if not fails and latency_factor != 1.0:
        duration = int(duration * latency_factor * rng.uniform(0.85, 1.15))
    span = PlannedSpan(
        "retrieve",
        "client",
        start_ns,
        start_ns + duration,
        {
            "gen_ai.operation.name": "retrieval",
            "gen_ai.data_source.id": COLLECTION,
            "gen_ai.retrieval.query.text": question.text,
            "db.system.name": "qdrant",
            "db.operation.name": "search",
            "db.collection.name": COLLECTION,
            "server.address": "qdrant.orbit.internal",
            "server.port": 6333,
        },
    )
    if fails:
        mark_failed(
            span, "TimeoutError", f"vector search timed out after {RETRIEVAL_TIMEOUT_MS} ms"
        )
    else:
        span.attributes["db.response.returned_rows"] = len(documents)
        span.attributes["gen_ai.retrieval.documents"] = json.dumps(
            [asdict(document) for document in documents]
        )
    return span


def _rerank_order(
    rng: random.Random, question: Question, documents: list[Document]
) -> list[Document]:
    """The top-n documents by cross-encoder score, which separates hits from misses well."""
    rescored = [
        Document(
            document.id,
            document.content,
            round(
                rng.uniform(0.86, 0.99)
                if document.id in question.relevant
                else rng.uniform(0.03, 0.35),
                4,
            ),
        )
        for document in documents
    ]
    rescored.sort(key=lambda document: document.score, reverse=True)
    return rescored[:TOP_N]


def _rerank(
    rng: random.Random,
    documents: list[Document],
    reranked: list[Document],
    start_ns: int,
) -> PlannedSpan:
    return PlannedSpan(
        "rerank",
        "internal",
        start_ns,
        start_ns + between_ms(rng, 20, 50),
        {
            "rerank.model": RERANK_MODEL,
            "rerank.input.count": len(documents),
            "rerank.top_n": TOP_N,
            "rerank.document.ids": [document.id for document in reranked],
        },
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """What the model writes: the text, how many times longer, and whether the input
    overflowed the context window so that the answer was cut off."""

    text: str
    token_factor: float = 1.0
    overflow: bool = False


MISSED_ANSWER = (
    "I could not find this in the Orbit documentation. Please contact support with your "
    "frame number."
)


def _chat(
    rng: random.Random,
    question: Question,
    documents: list[Document],
    start_ns: int,
    latency_factor: float,
    answer: Answer | None = None,
) -> PlannedSpan:
    answer = answer or Answer(question.answer)
    context = "\n".join(f"[{document.id}] {document.content}" for document in documents)
    if answer.overflow:
        context += "\n[truncated]"
    user = f"Context:\n{context}\n\nQuestion: {question.text}"
    first_chunk_ns = lognormal_ms(rng, 350, 0.45, 150, 1100)
    output_tokens = max(1, round(estimate_tokens(answer.text) * answer.token_factor))
    decode_ns = int(output_tokens * rng.uniform(10.0, 25.0) * MS)
    ceiling_ms = CHAT_MAX_MS * max(1.0, answer.token_factor)
    healthy_ns = min(max(first_chunk_ns + decode_ns, CHAT_MIN_MS * MS), int(ceiling_ms * MS))
    duration_ns = int(healthy_ns * latency_factor)
    input_tokens = estimate_tokens(SYSTEM_PROMPT) + estimate_tokens(user) + 7
    finish_reason = "stop"
    if answer.overflow:
        input_tokens = int(CONTEXT_WINDOW * rng.uniform(0.93, 0.995))
        output_tokens = CONTEXT_WINDOW - input_tokens
        finish_reason = "length"
    streamed = rng.random() < STREAM_RATIO
    usage_known = not (streamed and rng.random() < STREAM_WITHOUT_USAGE_RATIO)

    span = PlannedSpan(
        f"chat {CHAT_MODEL}",
        "client",
        start_ns,
        start_ns + duration_ns,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": CHAT_MODEL,
            "gen_ai.request.temperature": 0.2,
            "gen_ai.request.max_tokens": 512,
            "gen_ai.request.stream": streamed,
            "gen_ai.output.type": "text",
            "gen_ai.prompt.name": PROMPT_NAME,
            "gen_ai.prompt.version": PROMPT_VERSION,
            "gen_ai.input.messages": input_messages(("system", SYSTEM_PROMPT), ("user", user)),
            "server.address": "api.openai.com",
            "server.port": 443,
            "gen_ai.response.model": CHAT_RESPONSE_MODEL,
            "gen_ai.response.id": f"chatcmpl-{random_id(rng, 24)}",
            "gen_ai.response.finish_reasons": [finish_reason],
            "gen_ai.output.messages": output_messages(answer.text, finish_reason),
        },
    )
    if streamed:
        span.attributes["gen_ai.response.time_to_first_chunk"] = round(
            first_chunk_ns * latency_factor / 1e9, 4
        )
    if usage_known:
        span.attributes["gen_ai.usage.input_tokens"] = input_tokens
        span.attributes["gen_ai.usage.output_tokens"] = output_tokens
    return span


def _fail_chat(rng: random.Random, chat: PlannedSpan, effect: Effect) -> None:
    """A provider error: the call returns early, with no answer and no usage."""
    chat.end_ns = chat.start_ns + lognormal_ms(rng, 180, 0.4, 60, 600)
    for key in (
        "gen_ai.response.model",
        "gen_ai.response.id",
        "gen_ai.response.finish_reasons",
        "gen_ai.output.messages",
        "gen_ai.response.time_to_first_chunk",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
    ):
        chat.attributes.pop(key, None)
    chat.attributes["http.response.status_code"] = effect.failure.status_code
    mark_failed(chat, effect.failure.error_type, effect.failure.message)


@dataclass(frozen=True, slots=True)
class Quality:
    """What went wrong with one answer, which its evaluation scores show."""

    missed: bool = False
    ungrounded: bool = False
    incoherent: bool = False
    off_instruction: bool = False

    def means(self) -> dict[str, float]:
        """The mean score each evaluator gives such an answer."""
        relevance, groundedness, coherence = 0.87, 0.9, 0.88
        if self.missed:
            relevance, groundedness = 0.32, min(groundedness, 0.62)
        if self.ungrounded:
            groundedness = min(groundedness, 0.34)
        if self.incoherent:
            coherence = 0.36
        if self.off_instruction:
            relevance, groundedness = min(relevance, 0.52), min(groundedness, 0.55)
        return {"relevance": relevance, "groundedness": groundedness, "coherence": coherence}


EVALUATORS = (
    ("relevance", 0.06, ("relevant", "not_relevant")),
    ("groundedness", 0.05, ("grounded", "ungrounded")),
    ("coherence", 0.05, ("coherent", "incoherent")),
)


def _add_evaluations(
    rng: random.Random, chat: PlannedSpan, quality: Quality | None = None
) -> None:
    """Online evaluator scores for the answer, as `gen_ai.evaluation.result` events."""
    means = (quality or Quality()).means()
    for name, spread, labels in EVALUATORS:
        mean = means[name]
        score = round(min(1.0, max(0.0, rng.gauss(mean, spread))), 3)
        chat.events.append(
            PlannedEvent(
                "gen_ai.evaluation.result",
                chat.end_ns,
                {
                    "gen_ai.evaluation.name": name,
                    "gen_ai.evaluation.score.value": score,
                    "gen_ai.evaluation.score.label": labels[0] if score >= 0.5 else labels[1],
                    "gen_ai.response.id": str(chat.attributes["gen_ai.response.id"]),
                },
            )
        )

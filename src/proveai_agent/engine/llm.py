"""The remediation engine's local models: a JSON-answering reasoning model and an embedder.

Both wrap llama-cpp-python, load their GGUF in the constructor (so that a missing or
broken file fails when the engine starts, not at its first case) and block: the engine
calls them from one worker thread, and a lock serialises calls that arrive from more.
Prompts and outputs are never logged; call statistics are, at debug level.

`ReasoningModel.complete_json` answers with a JSON object constrained by a JSON schema
(llama-cpp-python's `response_format` turns the schema into a grammar) at temperature 0,
so the same prompt gives the same answer. What the grammar cannot enforce (numeric
bounds, string lengths, array lengths) `check_schema` checks afterwards.

The prompt always fits the context: system prompt, user text and `max_tokens` together
take at most `n_ctx` tokens. When they would not, the user text is cut from its end at a
token boundary and `TRUNCATION_MARK` appended, so the model is told that evidence is
missing; the engine puts the most important evidence first. When the system prompt alone
(with an empty user text and `max_tokens`) does not fit, the call raises `PromptTooLong`.

A deadline bounds every call: llama.cpp's abort callback checks the clock during each
evaluation, prompt and generated tokens alike, so a slow model stops within one graph
node of `timeout_s` and the call raises `ModelTimeout`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Appended to a user text that was cut to fit the context.
TRUNCATION_MARK = "\n[truncated]"

# Tokens assumed for a chat format's framing when its formatter cannot be found.
_FRAMING_MARGIN = 64

# Texts embedded per llama.cpp batch: attention spans the whole batch, so a few short texts
# together are faster than one at a time (138/s against 98/s for MiniLM) and many are slower.
_EMBED_GROUP = 8

# The JSON-schema keywords `check_schema` enforces, and those it accepts and ignores.
_CHECKED_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
}
_ANNOTATIONS = {"description", "title", "$comment"}


class LLMError(Exception):
    """A local model could not give an answer."""


class ModelUnavailable(LLMError):
    """llama-cpp-python is not installed, or the GGUF does not load."""


class PromptTooLong(LLMError):
    """The system prompt and `max_tokens` alone exceed the context."""


class ModelTimeout(LLMError):
    """The model did not finish before the deadline."""


class InvalidOutput(LLMError):
    """The model's output is not JSON, or not JSON that the schema allows."""


@dataclass(frozen=True)
class CallStats:
    """What the last `complete_json` call cost."""

    prompt_tokens: int
    completion_tokens: int
    user_tokens_dropped: int
    seconds: float


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as error:
        raise ModelUnavailable(
            f"llama-cpp-python is not installed ({error}); ./dev setup installs it"
        ) from None
    return llama_cpp


def _load(path: Path, **params: Any) -> Any:
    llama_cpp = _llama_cpp()
    if not path.is_file():
        raise ModelUnavailable(f"model file not found: {path}")
    started = time.monotonic()
    try:
        llm = llama_cpp.Llama(model_path=str(path), verbose=False, **params)
    except (ValueError, RuntimeError) as error:
        raise ModelUnavailable(f"llama.cpp cannot load {path}: {error}") from None
    logger.debug("loaded %s in %.2f s", path.name, time.monotonic() - started)
    return llm


# JSON-schema checking


def unsupported_keywords(schema: dict[str, Any]) -> set[str]:
    """Keywords anywhere in `schema` that `check_schema` does not check."""
    found = set(schema) - _CHECKED_KEYWORDS - _ANNOTATIONS
    if isinstance(schema.get("additionalProperties"), dict):
        found.add("additionalProperties (a schema)")
    if isinstance(schema.get("items"), list):
        found.add("items (a list)")
    for sub in (schema.get("properties") or {}).values():
        found |= unsupported_keywords(sub)
    if isinstance(schema.get("items"), dict):
        found |= unsupported_keywords(schema["items"])
    return found


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    raise ValueError(f"unsupported type in schema: {kind}")


def check_schema(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Every way `value` breaks `schema`, one readable line each; empty when it conforms.

    The subset of JSON Schema checked: type (a name or a list of names), enum, minimum,
    maximum, minLength, maxLength, properties, required, additionalProperties (false),
    items, minItems and maxItems.
    """
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_type_ok(value, kind) for kind in names):
            return [f"{where}: {json.dumps(value)} is not of type {'/'.join(names)}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {json.dumps(value)} is not one of {json.dumps(schema['enum'])}"]

    problems: list[str] = []
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(
                f"{where}: {len(value)} characters, fewer than {schema['minLength']}"
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(
                f"{where}: {len(value)} characters, more than {schema['maxLength']}"
            )
    if isinstance(value, list):
        problems.extend(_check_array(value, schema, where))
    if isinstance(value, dict):
        problems.extend(_check_object(value, schema, where))
    return problems


def _check_array(value: list[Any], schema: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append(f"{where}: {len(value)} items, fewer than {schema['minItems']}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(f"{where}: {len(value)} items, more than {schema['maxItems']}")
    if isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems.extend(check_schema(item, schema["items"], f"{where}[{i}]"))
    return problems


def _check_object(value: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
    properties = schema.get("properties") or {}
    problems = [
        f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value
    ]
    for key, item in value.items():
        if key in properties:
            problems.extend(check_schema(item, properties[key], f"{where}.{key}"))
        elif schema.get("additionalProperties") is False:
            problems.append(f"{where}: unexpected {key!r}")
    return problems


# The reasoning model


class ReasoningModel:
    """A chat model that answers with schema-constrained JSON, deterministically.

    Args:
        path: the GGUF file (verified by `models.resolve`).
        n_ctx: the context, prompt and answer together, in tokens.
        threads: CPU threads for prompt and generation; 1 keeps the agent's other work
            responsive on a small machine.
        chat_format: a llama-cpp-python chat format name ("chatml" for SmolLM2).
        seed: the sampler seed; at temperature 0 it only matters to llama.cpp internals.
    """

    def __init__(
        self,
        path: Path | str,
        n_ctx: int = 2048,
        threads: int = 1,
        chat_format: str = "chatml",
        seed: int = 0,
    ) -> None:
        self.path = Path(path)
        self.n_ctx = n_ctx
        self.chat_format = chat_format
        self.seed = seed
        self.last_call: CallStats | None = None
        self._lock = threading.Lock()
        self._deadline = math.inf
        self._llm = _load(
            self.path,
            n_ctx=n_ctx,
            n_batch=min(512, n_ctx),
            n_threads=threads,
            n_threads_batch=threads,
            seed=seed,
            chat_format=chat_format,
        )
        self._formatter = _chat_formatter(chat_format)
        llama_cpp = _llama_cpp()
        # Held on self: the C pointer is valid only while the ctypes object lives.
        self._abort = llama_cpp.ggml_abort_callback(self._past_deadline)
        llama_cpp.llama_set_abort_callback(self._llm.ctx, self._abort, None)

    def _past_deadline(self, _data: Any) -> bool:
        return time.monotonic() > self._deadline

    def close(self) -> None:
        """Free the model; the object is unusable afterwards."""
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's own tokenizer, without special tokens."""
        with self._lock:
            return len(self._tokenize(text))

    def _tokenize(self, text: str) -> list[int]:
        if self._llm is None:
            raise ModelUnavailable("the model is closed")
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _messages(self, system: str, user: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _prompt_tokens(self, system: str, user: str) -> int:
        """Tokens of the formatted chat prompt, counted as llama-cpp-python will feed it."""
        if self._formatter is None:
            return len(self._tokenize(system)) + len(self._tokenize(user)) + _FRAMING_MARGIN
        result = self._formatter(messages=self._messages(system, user))
        prompt = result.prompt.encode("utf-8")
        return len(self._llm.tokenize(prompt, add_bos=not result.added_special, special=True))

    def _fit(self, system: str, user: str, max_tokens: int) -> tuple[str, int]:
        """The user text cut to fit the context with `max_tokens`, and the tokens dropped."""
        budget = self.n_ctx - max_tokens
        base = self._prompt_tokens(system, "")
        if base > budget:
            raise PromptTooLong(
                f"the system prompt takes {base} tokens; with max_tokens={max_tokens} the "
                f"context of {self.n_ctx} tokens has room for {budget}"
            )
        over = self._prompt_tokens(system, user) - budget
        if over <= 0:
            return user, 0

        ids = self._tokenize(user)
        mark = len(self._tokenize(TRUNCATION_MARK))
        keep = len(ids) - over - mark
        while keep > 0:
            text = self._llm.detokenize(ids[:keep]).decode("utf-8", errors="ignore")
            over = self._prompt_tokens(system, text + TRUNCATION_MARK) - budget
            if over <= 0:
                return text + TRUNCATION_MARK, len(ids) - keep
            keep -= over
        if self._prompt_tokens(system, TRUNCATION_MARK) <= budget:
            return TRUNCATION_MARK, len(ids)
        return "", len(ids)

    def complete_json(
        self,
        system: str,
        user: str,
        schema: dict[str, Any],
        max_tokens: int,
        timeout_s: float,
    ) -> dict[str, Any]:
        """The model's answer to `user`, a JSON object that `schema` allows.

        Args:
            system: instructions; never cut.
            user: the evidence; cut from its end when the context is short.
            schema: a JSON schema for an object, within the subset `check_schema` checks.
            max_tokens: the most tokens the answer may take.
            timeout_s: seconds from this call until it gives up, waiting for the lock included.

        Raises:
            PromptTooLong: the system prompt and max_tokens alone exceed the context.
            ModelTimeout: the deadline passed.
            InvalidOutput: the answer is not JSON, was cut at max_tokens, or breaks the schema.
            ValueError: the schema uses keywords that would not be checked.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        unchecked = unsupported_keywords(schema)
        if unchecked:
            raise ValueError(f"schema keywords not supported: {sorted(unchecked)}")
        if not self._lock.acquire(timeout=max(timeout_s, 0.0)):
            raise ModelTimeout(f"the model was busy for the whole {timeout_s:.2f} s")
        try:
            if self._llm is None:
                raise ModelUnavailable("the model is closed")
            text, dropped = self._fit(system, user, max_tokens)
            response = self._generate(system, text, schema, max_tokens, deadline, timeout_s)
        finally:
            self._deadline = math.inf
            self._lock.release()

        choice = response["choices"][0]
        usage = response.get("usage") or {}
        self.last_call = CallStats(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            user_tokens_dropped=dropped,
            seconds=time.monotonic() - started,
        )
        logger.debug(
            "completion: %d prompt tokens (%d user tokens dropped), %d output tokens, %.2f s",
            self.last_call.prompt_tokens,
            dropped,
            self.last_call.completion_tokens,
            self.last_call.seconds,
        )
        return _parse(
            choice["message"]["content"] or "", choice.get("finish_reason"), schema, max_tokens
        )

    def _generate(
        self,
        system: str,
        user: str,
        schema: dict[str, Any],
        max_tokens: int,
        deadline: float,
        timeout_s: float,
    ) -> Any:
        self._deadline = deadline
        if time.monotonic() > deadline:
            raise ModelTimeout(f"no time left of {timeout_s:.2f} s to start generating")
        try:
            return self._llm.create_chat_completion(
                messages=self._messages(system, user),
                response_format={"type": "json_object", "schema": schema},
                temperature=0.0,
                max_tokens=max_tokens,
                seed=self.seed,
            )
        except RuntimeError as error:
            # An abort leaves the evaluated tokens unknown to llama-cpp-python's prefix cache.
            self._llm.reset()
            if time.monotonic() > deadline:
                raise ModelTimeout(
                    f"the model did not finish within {timeout_s:.2f} s"
                ) from None
            raise LLMError(f"llama.cpp failed: {error}") from error


def _parse(
    text: str, finish_reason: str | None, schema: dict[str, Any], max_tokens: int
) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if finish_reason == "length":
            raise InvalidOutput(
                f"the answer reached max_tokens={max_tokens} unfinished"
            ) from None
        raise InvalidOutput(f"the answer is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidOutput(f"the answer is a JSON {type(value).__name__}, not an object")
    problems = check_schema(value, schema)
    if problems:
        raise InvalidOutput("; ".join(problems))
    return value


def _chat_formatter(name: str) -> Callable[..., Any] | None:
    """llama-cpp-python's prompt formatter for a chat format name, None if not found."""
    from llama_cpp import llama_chat_format

    for candidate in (name.replace("-", "_"), name.replace("-", "")):
        formatter = getattr(llama_chat_format, f"format_{candidate}", None)
        if callable(formatter):
            return formatter
    logger.debug(
        "no formatter for chat format %s: framing counted as %d", name, _FRAMING_MARGIN
    )
    return None


# The embedder


class Embedder:
    """Sentence embeddings, L2-normalised, from a GGUF embedding model (MiniLM).

    Args:
        path: the GGUF file, an encoder with a pooling type (the converted MiniLM).
        threads: CPU threads.

    A text longer than the model's context (512 tokens for MiniLM) is cut to it.
    """

    def __init__(self, path: Path | str, threads: int = 1) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._llm = _load(
            self.path,
            embedding=True,
            n_ctx=0,
            n_batch=512,
            n_ubatch=512,
            n_threads=threads,
            n_threads_batch=threads,
        )
        self._dim = int(self._llm.n_embd())

    @property
    def dim(self) -> int:
        """Width of an embedding."""
        return self._dim

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model sees `text`, with its special tokens ([CLS] … [SEP])."""
        with self._lock:
            if self._llm is None:
                raise ModelUnavailable("the embedder is closed")
            return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts`, shape (len(texts), dim), float32, each of norm 1."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        started = time.monotonic()
        with self._lock:
            if self._llm is None:
                raise ModelUnavailable("the embedder is closed")
            rows: list[Any] = []
            for start in range(0, len(texts), _EMBED_GROUP):
                rows.extend(
                    self._llm.embed(list(texts[start : start + _EMBED_GROUP]), truncate=True)
                )
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), self._dim)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.where(norms > 0, norms, 1.0)
        logger.debug("embedded %d texts in %.3f s", len(texts), time.monotonic() - started)
        return vectors

    def close(self) -> None:
        """Free the model; the object is unusable afterwards."""
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

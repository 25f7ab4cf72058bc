"""Building OTLP protobuf values from plain Python values, for the decoder's tests."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def any_value(value: object) -> AnyValue:
    """The protobuf AnyValue of a plain value (bytes stay bytes)."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    result = AnyValue()
    if isinstance(value, list):
        result.array_value.values.extend(any_value(item) for item in value)
    else:
        assert isinstance(value, dict)
        result.kvlist_value.values.extend(key_values(value))
    return result


def key_values(attributes: dict[str, object]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attributes.items()]

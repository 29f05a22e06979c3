"""The client's payload encoding and its mapping of gRPC statuses to exceptions."""

from __future__ import annotations

import json
import math
import pickle

import grpc
import pytest
from agent_infra.client import errors
from agent_infra.client._payload import decode_payload, decode_value, encode_payload, encode_value

# --- payload encoding -------------------------------------------------------------------------


def test_strings_are_sent_as_they_are() -> None:
    # Another client's plain string payload must read the same; no JSON quoting added.
    assert encode_payload({"command": "echo hi && ls", "empty": "", "json_text": '{"a": 1}'}) == {
        "command": "echo hi && ls", "empty": "", "json_text": '{"a": 1}'}


@pytest.mark.parametrize(("value", "wire"), [
    ({"NAME": "value"}, '{"NAME":"value"}'),
    (["echo", "hi"], '["echo","hi"]'),
    (("a", 1), '["a",1]'),
    (42, "42"),
    (2.5, "2.5"),
    (True, "true"),
    (False, "false"),
    (None, "null"),
    ({"nested": {"list": [1, {"x": None}]}}, '{"nested":{"list":[1,{"x":null}]}}'),
])
def test_other_values_are_json(value: object, wire: str) -> None:
    assert encode_value("k", value) == wire
    assert encode_payload({"k": value}) == {"k": wire}


def test_json_values_round_trip_and_keep_unicode() -> None:
    payload = {"env": {"GREETING": "héllo ✓"}, "n": [1, 2.0, -3], "flag": True}
    encoded = encode_payload(payload)
    assert "héllo ✓" in encoded["env"]  # not \u-escaped: readable in logs and other clients
    assert {key: json.loads(text) for key, text in encoded.items()} == payload


def test_never_python_repr() -> None:
    # The original client sent str(value): "{'a': 1}" and "True", which JSON cannot read.
    encoded = encode_payload({"d": {"a": 1}, "b": True})
    assert encoded == {"d": '{"a":1}', "b": "true"}


@pytest.mark.parametrize("value", [b"bytes", object(), {1, 2}, math.nan, math.inf])
def test_values_json_cannot_carry_are_refused_naming_the_key(value: object) -> None:
    with pytest.raises(TypeError, match=r"payload\['bad'\]"):
        encode_payload({"ok": "x", "bad": value})


def test_keys_must_be_strings() -> None:
    with pytest.raises(TypeError, match="payload keys must be str"):
        encode_payload({1: "x"})  # type: ignore[dict-item]


def test_empty_payloads() -> None:
    assert encode_payload({}) == {}
    assert encode_payload(None) == {}


# --- payload decoding -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    {"NAME": "value"}, ["echo", "hi"], 42, -2.5, 0, True, False, None,
    {"nested": {"list": [1, {"x": None}]}}, {"env": {"GREETING": "héllo ✓"}},
])
def test_encoded_values_decode_to_what_was_sent(value: object) -> None:
    assert decode_value(encode_value("k", value)) == value


@pytest.mark.parametrize("text", [
    "", "hello", "echo hi && ls", "hi\n", "42abc", "{not json", "[1, 2", "NaN", "Infinity",
    "-Infinity", "1e999", '"quoted"', "truth", "nullable",
])
def test_plain_text_stays_as_it_is(text: str) -> None:
    assert decode_value(text) == text


def test_decoding_tolerates_surrounding_whitespace() -> None:
    # A task's stdout usually ends with a newline.
    assert decode_value("42\n") == 42
    assert decode_value(' {"a": [1]}\n') == {"a": [1]}


def test_decode_payload() -> None:
    assert decode_payload({"exit_code": "0", "stdout": "hi\n", "timed_out": "false"}) == {
        "exit_code": 0, "stdout": "hi\n", "timed_out": False}


# --- error mapping ----------------------------------------------------------------------------

ADDRESS = "127.0.0.1:50100"
METHOD = "/env_manager.v1.EnvManagerService/StreamLogs"


def rpc_error(code: grpc.StatusCode, details: str | None) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(("code", "cls"), [
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    (grpc.StatusCode.NOT_FOUND, errors.NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
    (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
    (grpc.StatusCode.CANCELLED, errors.Cancelled),
    (grpc.StatusCode.UNIMPLEMENTED, errors.Unimplemented),
    (grpc.StatusCode.INTERNAL, errors.Internal),
    (grpc.StatusCode.DATA_LOSS, errors.Internal),
    (grpc.StatusCode.UNAVAILABLE, errors.InfraUnavailable),
])
def test_each_status_maps_to_its_class(code: grpc.StatusCode, cls: type[errors.InfraError]
                                       ) -> None:
    error = errors.error_from_rpc(rpc_error(code, "service 'x' is unknown"), ADDRESS, METHOD)
    assert type(error) is cls
    assert isinstance(error, errors.InfraError)
    assert error.code == code.name
    assert error.details == "service 'x' is unknown"
    assert error.address == ADDRESS
    assert error.method == METHOD
    assert str(error) == f"service 'x' is unknown ({code.name} from {ADDRESS}{METHOD})"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED,
                                  grpc.StatusCode.OUT_OF_RANGE])
def test_codes_without_a_class_give_the_base_class_with_the_code(code: grpc.StatusCode) -> None:
    error = errors.error_from_rpc(rpc_error(code, "boom"), ADDRESS)
    assert type(error) is errors.InfraError
    assert error.code == code.name
    assert error.method is None
    assert str(error) == f"boom ({code.name} from {ADDRESS})"


def test_missing_details_still_say_something() -> None:
    error = errors.error_from_rpc(rpc_error(grpc.StatusCode.UNAVAILABLE, None), ADDRESS)
    assert error.details == "unavailable"


def test_client_made_errors_carry_their_class_code() -> None:
    error = errors.InfraUnavailable("could not connect", address=ADDRESS)
    assert error.code == "UNAVAILABLE"
    assert errors.NotFound("x", address=ADDRESS).code == "NOT_FOUND"


def test_errors_survive_pickling() -> None:
    # multiprocessing and some log handlers pickle exceptions.
    error = errors.error_from_rpc(rpc_error(grpc.StatusCode.NOT_FOUND, "gone"), ADDRESS, METHOD)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is errors.NotFound
    assert (copy.code, copy.details, copy.address, copy.method, str(copy)) == (
        error.code, error.details, error.address, error.method, str(error))


def test_every_exported_error_is_an_infra_error() -> None:
    exported = [getattr(errors, name) for name in errors.__all__ if name != "error_from_rpc"]
    assert all(issubclass(cls, errors.InfraError) for cls in exported)
    assert len(exported) == 13

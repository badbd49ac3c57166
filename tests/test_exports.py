"""The public names of nahual, its error tree and its timeouts."""

from __future__ import annotations

import builtins

import pytest

import nahual
from nahual import errors
from nahual._config import DEFAULT_TIMEOUT, USE_CLIENT_DEFAULT, Timeout, parse_timeout
from nahual.errors import ConfigError

PUBLIC = {
    "AuthError", "BlockError", "Client", "ConfigError", "Contract", "ContractError", "InstanceError", "LaunchError",
    "Model", "ModelHandle", "NahualError", "Param", "ParamError", "PayloadError", "ProtocolError", "RemoteError",
    "Server", "ServerProcess", "StateError", "Timeout", "TimeoutError", "TransportError", "WeightsError",
    "__version__", "launch", "reply_array",
}  # fmt: skip


def test_all_lists_exactly_the_public_names() -> None:
    assert set(nahual.__all__) == PUBLIC
    assert len(nahual.__all__) == len(set(nahual.__all__))
    for name in nahual.__all__:
        assert getattr(nahual, name) is not None
    assert isinstance(nahual.__version__, str) and nahual.__version__


def test_public_names_are_documented() -> None:
    for name in PUBLIC - {"__version__"}:
        assert getattr(nahual, name).__doc__, name


def test_submodules_declare_all() -> None:
    import nahual.client
    import nahual.client.echo
    import nahual.server

    assert set(errors.__all__) == {name for name in PUBLIC if name.endswith("Error")}
    assert set(nahual.client.__all__) == {
        "Client", "InProcessTransport", "ModelHandle", "NngTransport", "Transport", "USE_CLIENT_DEFAULT",
    }  # fmt: skip
    assert set(nahual.server.__all__) == {"RequestHandler", "Server", "package_versions"}
    assert nahual.Server is nahual.server.Server
    for name in nahual.client.__all__ + nahual.server.__all__:
        assert getattr(nahual.client, name, None) or getattr(nahual.server, name), name
    assert set(nahual.client.echo.__all__) == {"load_model", "process_data"}


def test_error_tree() -> None:
    assert issubclass(nahual.TimeoutError, builtins.TimeoutError)
    assert issubclass(nahual.TimeoutError, nahual.TransportError)
    assert nahual.TimeoutError is not builtins.TimeoutError
    assert issubclass(nahual.AuthError, nahual.RemoteError)
    assert issubclass(nahual.ConfigError, ValueError) and issubclass(nahual.ContractError, ValueError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), nahual.NahualError)
    assert not issubclass(nahual.NahualError, ValueError)


def test_remote_error_carries_the_remote_details() -> None:
    error = nahual.RemoteError("ValueError", "bad input", "Traceback ...", "process", 17)
    assert (error.remote_type, error.remote_message) == ("ValueError", "bad input")
    assert error.remote_traceback == "Traceback ..."
    assert (error.operation, error.request_id) == ("process", 17)
    assert str(error) == "ValueError in 'process': bad input"
    assert str(nahual.RemoteError("KeyError", "x")) == "KeyError: x"


def test_default_timeout_is_finite() -> None:
    assert Timeout(connect=5.0, request=60.0, startup=60.0) == DEFAULT_TIMEOUT
    assert all(value is not None and value > 0 for value in (DEFAULT_TIMEOUT.connect, DEFAULT_TIMEOUT.request))
    with pytest.raises(AttributeError):
        DEFAULT_TIMEOUT.request = 1.0  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    "value, expected",
    [
        (2, Timeout(2.0, 2.0, 2.0)),
        (0.25, Timeout(0.25, 0.25, 0.25)),
        (None, Timeout(None, None, None)),
        (Timeout(1, None, 3), Timeout(1, None, 3)),
    ],
)
def test_parse_timeout(value: object, expected: Timeout) -> None:
    assert parse_timeout(value) == expected


@pytest.mark.parametrize("value", [0, -1, True, "5", [5], USE_CLIENT_DEFAULT])
def test_parse_timeout_refuses_nonsense(value: object) -> None:
    with pytest.raises(ConfigError, match="timeout must be a positive number"):
        parse_timeout(value)

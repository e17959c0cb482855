"""The arguments of pyroscope.write, discovery.kubernetes and discovery.docker, decoded from
configuration text: defaults, nested blocks and each check, positioned at its argument."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from agent.config import URL, Secret
from agent.config.decode import decode
from agent.config.evaluate import Scope
from agent.config.parser import parse
from agent.discovery.docker import DockerArguments, DockerFilter
from agent.discovery.kubernetes import KubernetesArguments, NamespaceDiscovery
from agent.errors import ConfigError
from agent.telemetry.server import to_json
from agent.write.pyroscope import PyroscopeWriteArguments, TracingOptions


def decode_text(text: str, arguments: type):
    (component,) = parse(text, "t.alloy").body
    return decode(component, arguments, Scope())


def write(endpoint_body: str) -> PyroscopeWriteArguments:
    endpoint = f'  endpoint {{\n    url = "http://p:4040"\n{endpoint_body}\n  }}'
    text = f'pyroscope.write "w" {{\n{endpoint}\n}}'
    return decode_text(text, PyroscopeWriteArguments)


def error_of(call, *args) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args)
    return str(caught.value)


def test_pyroscope_write_defaults_and_options():
    args = decode_text(
        'pyroscope.write "w" {\n'
        '  external_labels = { "env" = "testing", }\n'
        "  tracing {\n    jaeger_propagator = false\n  }\n"
        '  endpoint {\n    url = "https://a"\n    headers = { "X-Scope-OrgID" = "t1" }\n'
        '    basic_auth {\n      username = "u"\n      password = "p4ss"\n    }\n  }\n'
        '  endpoint {\n    url = "http://b"\n    remote_timeout = "3s"\n'
        "    max_backoff_retries = 0\n  }\n"
        "}",
        PyroscopeWriteArguments,
    )
    assert args.external_labels == {"env": "testing"}
    assert args.tracing == TracingOptions(jaeger_propagator=False, trace_context_propagator=True)
    first, second = args.endpoint
    assert first.headers == {"X-Scope-OrgID": "t1"}
    assert first.basic_auth.password == Secret("p4ss")
    assert "p4ss" not in repr(args)
    assert (first.remote_timeout, first.min_backoff_period, first.max_backoff_period) == (
        10,
        0.5,
        300,
    )
    assert (first.max_backoff_retries, first.retry_on_http_429, first.enable_http2) == (
        10,
        True,
        True,
    )
    assert (second.remote_timeout, second.max_backoff_retries) == (3, 0)
    assert decode_text('pyroscope.write "w" {\n}', PyroscopeWriteArguments).endpoint == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '    bearer_token = "t"\n    basic_auth {\n      username = "u"\n    }',
            "4:5: bearer_token: at most one of",
        ),
        (
            '    bearer_token = "t"\n    bearer_token_file = "/f"',
            "5:5: bearer_token_file: at most one of",
        ),
        (
            '    basic_auth {\n      password = "p"\n      password_file = "/f"\n    }',
            "6:7: password_file: cannot be set together with password",
        ),
        (
            '    authorization {\n      type = "Basic"\n    }',
            "5:7: type: Basic is not allowed here",
        ),
        (
            '    oauth2 {\n      client_secret = "s"\n      client_secret_file = "/f"\n    }',
            "6:7: client_secret_file: cannot be set",
        ),
        (
            '    tls_config {\n      ca_pem = "x"\n      ca_file = "/ca"\n    }',
            "6:7: ca_file: cannot be set together with ca_pem",
        ),
        (
            '    tls_config {\n      cert_file = "/c"\n    }',
            "4:5: key_file: a client certificate needs a key",
        ),
        (
            '    tls_config {\n      min_version = "TLS9"\n    }',
            "5:7: min_version: must be one of TLS10, TLS11, TLS12, TLS13",
        ),
        ('    no_proxy = "x"', "4:5: no_proxy: requires proxy_url"),
        ('    remote_timeout = "0s"', "4:5: remote_timeout: must be greater than 0"),
        (
            '    min_backoff_period = "10m"',
            "2:3: max_backoff_period: must not be less than min_backoff_period",
        ),
        ("    max_backoff_retries = -1", "4:5: max_backoff_retries: must not be negative"),
        ('    remote_timeout = "soon"', "4:22: invalid duration 'soon'"),
        ("    headers = { a = 1, b = true }", "4:28: expected string, got bool"),
    ],
)
def test_pyroscope_write_checks(body, message):
    assert error_of(write, body).startswith(f"t.alloy:{message}")


def test_pyroscope_write_url_needs_scheme_and_host():
    text = 'pyroscope.write "w" {\n  endpoint {\n    url = "pyroscope:4040"\n  }\n}'
    message = error_of(decode_text, text, PyroscopeWriteArguments)
    assert message == "t.alloy:3:5: url: must be an http:// or https:// URL with a host"


def kubernetes(body: str) -> KubernetesArguments:
    return decode_text(f'discovery.kubernetes "k" {{\n{body}\n}}', KubernetesArguments)


def test_kubernetes_accepts_every_alloy_role_and_its_blocks():
    for role in ("pod", "node", "service", "endpoints", "endpointslice", "ingress"):
        assert kubernetes(f'role = "{role}"').role == role
    args = kubernetes(
        'role = "pod"\nnamespaces {\n  own_namespace = true\n  names = ["a"]\n}\n'
        'selectors {\n  role = "pod"\n  label = "app=web"\n}\n'
        'selectors {\n  role = "node"\n  field = "metadata.name=n1"\n}\n'
        "attach_metadata {\n  node = true\n}\n"
        'api_server = "https://k8s:6443"\nbearer_token_file = "/token"'
    )
    assert args.namespaces == NamespaceDiscovery(own_namespace=True, names=["a"])
    assert [(s.role, s.label, s.field) for s in args.selectors] == [
        ("pod", "app=web", ""),
        ("node", "", "metadata.name=n1"),
    ]
    assert args.attach_metadata.node is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", '1:1: missing required attribute "role"'),
        (
            'role = "pods"',
            "2:1: role: must be one of pod, node, service, endpoints, endpointslice, ingress,"
            " not 'pods'",
        ),
        ('role = "pod"\nselectors {\n  role = "svc"\n}', "4:3: role: must be one of"),
        (
            'role = "pod"\nselectors {\n  role = "node"\n}',
            "3:1: selectors: pod role supports only pod selectors",
        ),
        (
            'role = "pod"\nselectors {\n  role = "pod"\n}\nselectors {\n  role = "pod"\n}',
            "3:1: selectors: duplicated selector role: pod",
        ),
        (
            'role = "pod"\napi_server = "https://a"\nkubeconfig_file = "/k"',
            "4:1: kubeconfig_file: cannot be set together with api_server",
        ),
        (
            'role = "pod"\nnamespaces {\n}\nnamespaces {\n}',
            '5:1: block "namespaces" may only be specified once',
        ),
    ],
)
def test_kubernetes_checks(body, message):
    assert error_of(kubernetes, body).startswith(f"t.alloy:{message}")


def docker(body: str) -> DockerArguments:
    return decode_text(f'discovery.docker "d" {{\n{body}\n}}', DockerArguments)


def test_docker_defaults_and_repeatable_filters():
    args = docker(
        'host = "unix:///var/run/docker.sock"\n'
        'filter {\n  name = "label"\n  values = ["profile=true"]\n}\n'
        'filter {\n  name = "status"\n  values = ["running", "paused"]\n}'
    )
    assert (args.port, args.host_networking_host, args.refresh_interval) == (80, "localhost", 60)
    assert args.match_first_network is True
    assert args.filter == [
        DockerFilter(name="label", values=["profile=true"]),
        DockerFilter(name="status", values=["running", "paused"]),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", '1:1: missing required attribute "host"'),
        (
            'host = "unix:///s"\nrefresh_interval = "0s"',
            "3:1: refresh_interval: must be greater than 0",
        ),
        (
            'host = "unix:///s"\nfilter {\n  name = "label"\n}',
            '3:1: missing required attribute "values"',
        ),
        ('host = "unix:///s"\nport = "eighty"', "3:8: expected number, got string"),
    ],
)
def test_docker_checks(body, message):
    assert error_of(docker, body).startswith(f"t.alloy:{message}")


def test_a_password_in_a_url_is_shown_nowhere_but_kept_for_the_client():
    args = decode_text(
        'pyroscope.write "w" {\n  endpoint {\n'
        '    url = "http://user:p%40ss-w0rd@pyroscope:4040/prefix"\n'
        '    proxy_url = "http://proxy-user:pr0xy-pw@proxy:3128"\n  }\n}',
        PyroscopeWriteArguments,
    )
    (endpoint,) = args.endpoint
    assert endpoint.url == "http://user:(redacted)@pyroscope:4040/prefix"
    assert endpoint.url.reveal() == "http://user:p%40ss-w0rd@pyroscope:4040/prefix"
    assert endpoint.proxy_url.reveal() == "http://proxy-user:pr0xy-pw@proxy:3128"
    # What the component API, logs and errors would show of the arguments.
    shown = json.dumps(to_json(args)) + repr(args) + str(args) + f"{endpoint.url}"
    assert "p%40ss" not in shown and "pr0xy-pw" not in shown
    assert "http://user:(redacted)@pyroscope:4040/prefix" in shown
    assert "http://proxy-user:(redacted)@proxy:3128" in shown
    # A new password is a change of arguments (the endpoint is reopened), the same one is not.
    assert endpoint == dataclasses.replace(endpoint, url=URL(endpoint.url.reveal()))
    assert endpoint != dataclasses.replace(
        endpoint, url=URL("http://user:new@pyroscope:4040/prefix")
    )


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("http://pyroscope:4040", "http://pyroscope:4040"),
        ("http://user@pyroscope:4040", "http://user@pyroscope:4040"),
        ("https://u:p@ss@host/a?b=c@d", "https://u:(redacted)@host/a?b=c@d"),
        ("http://:pw@[::1]:80/", "http://:(redacted)@[::1]:80/"),
        ("u:pw@host", "u:(redacted)@host"),
    ],
)
def test_url_shows_everything_but_the_password(written, shown):
    url = URL(written)
    assert (str(url), repr(url), url.reveal()) == (shown, f"URL({shown!r})", written)
    assert pickle.loads(pickle.dumps(url)).reveal() == written

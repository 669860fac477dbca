"""hosts.toml parsing: origin, mirrors in order, capabilities, CA paths, plain HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from stargz.errors import ConfigError
from stargz.registry.hosts import HostsConfig, is_localhost


def write_hosts(root: Path, host: str, text: str) -> Path:
    (root / host).mkdir(parents=True)
    (root / host / "hosts.toml").write_text(text)
    return root


def test_default_origin_is_https_and_hub_endpoint() -> None:
    hosts = HostsConfig.create()
    [origin] = hosts.endpoints("docker.io")
    assert origin.base_url == "https://registry-1.docker.io/v2"
    assert not origin.is_mirror
    [plain] = HostsConfig.create(insecure_hosts=["h:5000"]).endpoints("h:5000")
    assert plain.base_url == "http://h:5000/v2"


def test_mirrors_first_then_origin(tmp_path: Path) -> None:
    write_hosts(tmp_path, "docker.io", '''
server = "https://registry-1.docker.io"
[host."https://mirror-a.example"]
  capabilities = ["pull", "resolve"]
  ca = "ca-a.pem"
[host."http://mirror-b.example:8080/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  [host."http://mirror-b.example:8080/prefix".header]
    x-test = "yes"
''')
    hosts = HostsConfig.create(tmp_path)
    pulls = hosts.endpoints("docker.io", "pull")
    assert [e.base_url for e in pulls] == ["https://mirror-a.example/v2",
                                           "http://mirror-b.example:8080/prefix/v2",
                                           "https://registry-1.docker.io/v2"]
    assert pulls[0].ca_files == (tmp_path / "docker.io" / "ca-a.pem",)
    assert pulls[1].skip_verify and pulls[1].headers == (("x-test", "yes"),)
    assert [e.is_mirror for e in pulls] == [True, True, False]
    resolves = hosts.endpoints("docker.io", "resolve")
    assert [e.host for e in resolves] == ["mirror-a.example", "registry-1.docker.io"]
    assert [e.host for e in hosts.endpoints("docker.io", "push")] == ["registry-1.docker.io"]


def test_plain_http_server_with_port_dir_and_ca(tmp_path: Path) -> None:
    write_hosts(tmp_path, "127.0.0.1:5443",
                'server = "https://127.0.0.1:5443"\nca = "/abs/c.pem"\n')
    write_hosts(tmp_path, "127.0.0.1:5000", 'server = "http://127.0.0.1:5000"\n')
    hosts = HostsConfig.create(tmp_path)
    [tls] = hosts.endpoints("127.0.0.1:5443")
    assert tls.ca_files == (Path("/abs/c.pem"),) and tls.scheme == "https"
    [plain] = hosts.endpoints("127.0.0.1:5000")
    assert plain.scheme == "http"


def test_override_path_and_default_dir(tmp_path: Path) -> None:
    write_hosts(tmp_path, "_default", '''
[host."https://cache.example/api"]
  override_path = true
''')
    first, origin = HostsConfig.create(tmp_path).endpoints("any.example")
    assert first.base_url == "https://cache.example/api"
    assert origin.base_url == "https://any.example/v2"


@pytest.mark.parametrize("text", [
    "server = 5",
    'server = "ftp://x"',
    '[host."https://m"]\ncapabilities = ["fly"]',
    '[host."https://m"]\nskip_verify = "yes"',
    '[host."https://m"]\nca = 3',
    "not toml = = =",
])
def test_bad_hosts_files(tmp_path: Path, text: str) -> None:
    write_hosts(tmp_path, "r.example", text)
    with pytest.raises(ConfigError) as info:
        HostsConfig.create(tmp_path).endpoints("r.example")
    assert "\n" not in str(info.value)


def test_missing_ca_file_is_config_error(tmp_path: Path) -> None:
    write_hosts(tmp_path, "r.example", 'ca = "/nonexistent/ca.pem"\n')
    [origin] = HostsConfig.create(tmp_path).endpoints("r.example")
    with pytest.raises(ConfigError):
        origin.ssl_context()


@pytest.mark.parametrize(("registry", "local"), [
    ("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True),
    ("127.1.2.3", True), ("[::1]:5000", True), ("registry.example:5000", False),
    ("10.0.0.1:5000", False), ("localhost.example", False), ("127.0.0.1.example:80", False),
])
def test_plain_http_for_localhost_only_when_asked(registry: str, local: bool) -> None:
    assert is_localhost(registry) is local
    origin = HostsConfig.create(plain_http_localhost=True).endpoints(registry)[-1]
    assert origin.scheme == ("http" if local else "https")
    assert HostsConfig.create().endpoints(registry)[-1].scheme == "https"


def test_plain_http_allowed_only_for_configured_hosts(tmp_path: Path) -> None:
    write_hosts(tmp_path, "r.example", 'server = "http://r.example:5000"\n'
                '[host."http://mirror.example"]\n[host."https://tls-mirror.example"]\n')
    hosts = HostsConfig.create(tmp_path, insecure_hosts=["named.example:81"])
    assert not hosts.plain_http_allowed("http://r.example:5000/v2/")  # not loaded yet
    hosts.endpoints("r.example")
    allowed = ["http://r.example:5000/v2/x", "http://MIRROR.example:80/v2/",
               "http://named.example:81/token"]
    refused = ["http://r.example/v2/", "http://r.example:5001/", "http://tls-mirror.example/",
               "http://named.example/", "http://127.0.0.1:5000/", "http://evil.example:5000/"]
    assert [hosts.plain_http_allowed(u) for u in allowed] == [True] * len(allowed)
    assert [hosts.plain_http_allowed(u) for u in refused] == [False] * len(refused)
    # A host that is no registry (a token realm) is plain HTTP by its own hosts.toml.
    write_hosts(tmp_path, "realm.example:81", 'server = "http://realm.example:81"\n')
    write_hosts(tmp_path, "tls-realm.example", 'server = "https://tls-realm.example"\n')
    assert hosts.plain_http_allowed("http://realm.example:81/token")
    assert not hosts.plain_http_allowed("http://tls-realm.example/token")
    loopback = HostsConfig.create(plain_http_localhost=True)
    assert loopback.plain_http_allowed("http://127.0.0.1:5000/")
    assert not loopback.plain_http_allowed("http://127.0.0.1.example/")


def test_plain_http_all_makes_every_registry_plain() -> None:
    hosts = HostsConfig.create(plain_http_all=True)
    assert [e.base_url for e in hosts.endpoints("reg.example:5000")] == [
        "http://reg.example:5000/v2"]
    assert hosts.plain_http_allowed("http://auth.example/token")
    assert not HostsConfig.create().plain_http_allowed("http://auth.example/token")

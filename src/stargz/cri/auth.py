"""A PullImage's AuthConfig as registry Credentials for the image's host, as containerd's CRI
reads it (``parseAuth``): username/password, else an identity token, else ``auth``
(base64 ``user:password``); a registry token alone is not supported (nor is it by containerd's
CRI). An AuthConfig whose ``server_address`` names another host is not used for this one."""

from __future__ import annotations

import base64
import binascii
import logging
from urllib.parse import urlsplit

from stargz.cri.api import runtime_v1_pb2
from stargz.registry.credentials import Credentials, normalize_host

log = logging.getLogger("stargz.cri")


def credentials_from_auth(auth: runtime_v1_pb2.AuthConfig, host: str) -> Credentials | None:
    """``auth``'s credentials for ``host``; None (said at WARNING) when there are none to use."""
    if auth.server_address:
        server = auth.server_address
        named = urlsplit(server).netloc if "://" in server else server.split("/", 1)[0]
        if normalize_host(named) != normalize_host(host):
            log.warning("CRI keychain: the AuthConfig of a pull from %s is for server %s: "
                        "not used", host, named)
            return None
    if auth.username:
        return Credentials(auth.username, auth.password)
    if auth.identity_token:
        return Credentials("", auth.identity_token, identity_token=True)
    if auth.auth:
        return _decode_auth(auth.auth, host)
    if auth.registry_token:
        log.warning("CRI keychain: a pull from %s sent only a registry token, which is not "
                    "supported (as containerd's CRI): its lazy layers go without it", host)
    return None


def _decode_auth(value: str, host: str) -> Credentials | None:
    try:
        username, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep, username, password = "", "", ""
    if not sep or not username:
        log.warning("CRI keychain: the auth of a pull from %s is not base64 user:password: "
                    "not used", host)
        return None
    return Credentials(username, password)

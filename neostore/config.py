"""Configuration that ZODB users already know: ZConfig and zodburi.

* ZConfig (zope.conf, ``ZODB.config.databaseFromString``)::

      %import neostore
      <zodb>
        <neostore>
          master-nodes 127.0.0.1:5551 127.0.0.1:5552
          name mycluster
          cache-size 50MB
          cache-path /var/cache/myapp/neostore.cache
        </neostore>
      </zodb>

* zodburi: ``neostore://mycluster@127.0.0.1:5551,127.0.0.1:5552?cache_size=50MB``
  (query keys: ``read_only``, ``cache_size``, ``cache_path``, ``read_ahead``, ``compress``, ``server_sync``,
  ``connect_timeout``, ``wait_timeout``, ``ca``, ``cert``, ``key``, plus ZODB.DB's own keys).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

from ZODB.config import BaseConfig
from zodburi.resolvers import Resolver

from neostore.rpc import TlsConfig


def _tls(ca: str | None, cert: str | None, key: str | None) -> TlsConfig | None:
    given = [value for value in (ca, cert, key) if value]
    if not given:
        return None
    if len(given) != 3:
        raise ValueError("TLS needs all three of ca, cert and key")
    assert ca and cert and key
    return TlsConfig(ca, cert, key)


class NeoStorageConfig(BaseConfig):
    """The datatype of the ``<neostore>`` ZConfig section."""

    def open(self) -> Any:
        from neostore.client import NeoStorage

        config = self.config
        return NeoStorage(
            master_nodes=config.master_nodes,
            name=config.name,
            read_only=config.read_only,
            cache_size=config.cache_size,
            compress=config.compress,
            connect_timeout=config.connect_timeout,
            wait_timeout=config.wait_timeout,
            server_sync=config.server_sync,
            tls=_tls(config.ca, config.cert, config.key),
            cache_path=config.cache_path,
            read_ahead=config.read_ahead,
        )


class NeoStorageURIResolver(Resolver):
    """zodburi resolver for ``neostore://NAME@HOST:PORT[,HOST:PORT...]?...``."""

    _int_args = ("read_only", "compress", "server_sync")
    _string_args = ("ca", "cert", "key", "cache_path")
    _bytesize_args = ("cache_size", "read_ahead")
    _float_args = ("connect_timeout", "wait_timeout")

    def __call__(self, uri: str) -> tuple[Any, dict[str, Any]]:
        scheme, _, rest = uri.partition("://")
        if scheme != "neostore" or "@" not in rest:
            raise ValueError(
                f"invalid neostore URI {uri!r}: expected neostore://CLUSTER@HOST:PORT[,HOST:PORT...]")
        location, _, query = rest.partition("?")
        name, _, masters = location.partition("@")
        name = unquote(name)
        master_nodes = [m for m in masters.strip("/").split(",") if m]
        if not name or not master_nodes:
            raise ValueError(f"invalid neostore URI {uri!r}: cluster name and a master are needed")
        kw, unused = self.interpret_kwargs(dict(parse_qsl(query)))
        tls = _tls(kw.pop("ca", None), kw.pop("cert", None), kw.pop("key", None))
        options = {key: kw[key] for key in ("cache_size", "cache_path", "read_ahead", "connect_timeout", "wait_timeout")
                   if key in kw}
        for flag in ("read_only", "compress", "server_sync"):
            if flag in kw:
                options[flag] = bool(kw[flag])

        def factory() -> Any:
            from neostore.client import NeoStorage

            return NeoStorage(master_nodes, name, tls=tls, **options)

        return factory, unused


resolve_uri = NeoStorageURIResolver()

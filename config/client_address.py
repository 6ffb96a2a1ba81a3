import ipaddress

from django.conf import settings
from django.http import HttpRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(request: HttpRequest) -> str | None:
    """
    The address of the client, as the per-address limits count it.

    The connection's own address, unless it is one of ``TRUSTED_PROXIES``
    (addresses or networks): then the nearest address in ``X-Forwarded-For``
    that is not a trusted proxy. A forwarded header from anyone else is
    ignored, so a client cannot pick its own address.

    An IPv4 address is itself. An IPv6 address stands for its network of
    ``HOLD_LIMIT_IPV6_PREFIX`` bits (default 64, what one host or home is
    given), written as that network's first address: ``2001:db8:1:2::``. A
    host that rotates through its network's addresses is then one client.
    An IPv4 address mapped into IPv6 (``::ffff:192.0.2.1``) is the IPv4 one.
    ``None`` when the connection has no address.
    """
    address = client_ip(request)
    return None if address is None else _counted_as(address)


def client_ip(request: HttpRequest) -> Address | None:
    """
    The client's own address: the connection's, or behind ``TRUSTED_PROXIES`` the forwarded one.

    The nearest address in ``X-Forwarded-For`` that is not a trusted proxy,
    when the connection comes from one; a forwarded header from anyone else
    is ignored. An IPv4 address mapped into IPv6 is the IPv4 one. ``None``
    when the connection has no address.
    """
    trusted = [ipaddress.ip_network(proxy, strict=False) for proxy in settings.TRUSTED_PROXIES]

    def parse(value: str) -> Address | None:
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            return None
        mapped = getattr(address, "ipv4_mapped", None)
        return address if mapped is None else mapped

    def is_trusted(address: Address) -> bool:
        return any(address in network for network in trusted)

    peer = parse(request.META.get("REMOTE_ADDR", ""))
    if peer is None or not is_trusted(peer):
        return peer
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")
    for hop in reversed(forwarded):
        address = parse(hop)
        if address is None:
            return peer
        if not is_trusted(address):
            return address
    return peer


def _counted_as(address: Address) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    network = ipaddress.IPv6Network((address, settings.HOLD_LIMIT_IPV6_PREFIX), strict=False)
    return str(network.network_address)

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
    An IPv6 address that carries an IPv4 client's (mapped ``::ffff:192.0.2.1``,
    6to4 ``2002:c000:201::``, Teredo) is that IPv4 client: a 6to4 host owns
    65,536 /64s. A forwarded address may carry a port (``[v6]:port``,
    ``v4:port``). ``None`` when the connection has no address.
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
        value = value.strip()
        if value.startswith("[") and "]" in value:  # [2001:db8::1]:51000
            value = value[1 : value.index("]")]
        elif value.count(":") == 1:  # 198.51.100.7:51000
            value = value.split(":", 1)[0]
        try:
            address = ipaddress.ip_address(value)
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
    teredo_client = address.teredo[1] if address.teredo else None
    embedded = address.ipv4_mapped or address.sixtofour or teredo_client
    if embedded is not None:
        return str(embedded)
    network = ipaddress.IPv6Network((address, settings.HOLD_LIMIT_IPV6_PREFIX), strict=False)
    return str(network.network_address)

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str | None:
    """
    The address of the client, for the per-address hold limit.

    The connection's own address, unless it is one of ``TRUSTED_PROXIES``
    (addresses or networks): then the nearest address in ``X-Forwarded-For``
    that is not a trusted proxy. A forwarded header from anyone else is
    ignored, so a client cannot pick its own address.
    """
    trusted = [ipaddress.ip_network(proxy, strict=False) for proxy in settings.TRUSTED_PROXIES]

    def parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(value.strip())
        except ValueError:
            return None

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted)

    peer = parse(request.META.get("REMOTE_ADDR", ""))
    if peer is None:
        return None
    if not is_trusted(peer):
        return str(peer)
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")
    for hop in reversed(forwarded):
        address = parse(hop)
        if address is None:
            return str(peer)
        if not is_trusted(address):
            return str(address)
    return str(peer)

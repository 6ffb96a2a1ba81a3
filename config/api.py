from ninja import NinjaAPI

from apps.messaging.api import router as messaging_router
from apps.payments.api import router as payments_router
from apps.reservations.api import router as reservations_router
from apps.rooms.api import router as rooms_router
from config.api_errors import JsonOnlyParser, install_error_handlers

api = NinjaAPI(
    title="Escape rooms booking API",
    version="1.0",
    description=(
        "Book escape-room time slots. A new reservation holds its slot for a payment "
        "hold (RESERVATION_HOLD_SECONDS); unpaid, it is cancelled when the hold ends."
    ),
    urls_namespace="api",
    parser=JsonOnlyParser(),
)
install_error_handlers(api)
api.add_router("", rooms_router)
api.add_router("", reservations_router)
api.add_router("", messaging_router)
api.add_router("", payments_router)

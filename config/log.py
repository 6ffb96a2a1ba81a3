"""The log format's pieces."""

import logging


class Formatter(logging.Formatter):
    """
    A formatter that also offers ``%(logger)s``: the last part of the logger's name.

    The seed's lines read ``INFO … scheduler Cancelled expired reservation …``
    whichever module writes them to the ``escape_rooms_backend.scheduler``
    logger: ``%(module)s`` would name the module instead.
    """

    def format(self, record: logging.LogRecord) -> str:
        record.logger = record.name.rpartition(".")[2]
        return super().format(record)
